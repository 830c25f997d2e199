"""`cameo compare`: planted curves with known answers, real short trainings, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cameo_cli.cli import main
from cameo_cli.config import dump_recipe, load_recipe
from cameo_cli.files import read_json_lines

STEPS = [100, 200, 300, 400]


def fake_run(
    folder: Path,
    method: str,
    seed: int,
    curves: dict[str, list[float]],
    reference: dict[str, float] | None = None,
) -> Path:
    """A run folder with a resolved recipe and the given held-out curves at STEPS, and the
    `reference` lines logged at the first."""
    folder.mkdir(parents=True)
    recipe = load_recipe("quickstart-cpu", [f"alignment.method={method}", f"train.seed={seed}"])
    dump_recipe(recipe, folder / "config.yaml")
    lines = []
    for index, step in enumerate(STEPS):
        lines.append({"step": step, "loss": 1.0 / step})  # a training metric: not compared
        lines.append({"step": step, **{name: values[index] for name, values in curves.items()}})
    lines[1].update(reference or {})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def compare(*args: object) -> object:
    return CliRunner().invoke(main, ["compare", *map(str, args)])


def planted(tmp_path: Path) -> list[Path]:
    base = {"val/psnr": [10.0, 12.0, 14.0, 15.0], "val/denoise_t500": [0.5, 0.4, 0.3, 0.3]}
    fast = {"val/psnr": [12.0, 15.0, 16.0, 16.0], "val/denoise_t500": [0.4, 0.3, 0.2, 0.2]}
    return [
        fake_run(tmp_path / "base-s0", "none", 0, base),
        fake_run(tmp_path / "base-s1", "none", 1, base),
        fake_run(tmp_path / "cameo-s0", "cameo", 0, fast),
        fake_run(tmp_path / "cameo-s1", "cameo", 1, fast),
    ]


def test_steps_to_the_baselines_best_value_and_their_ratio(tmp_path: Path) -> None:
    runs = planted(tmp_path)
    out = tmp_path / "out"
    result = compare(*runs, "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert data["baseline"] == "alignment.method=none"
    assert sorted(data["methods"]) == ["alignment.method=cameo", "alignment.method=none"]
    rows = {(r["metric"], r["method"]): r for r in data["steps_to_baseline_best"]}
    psnr = rows[("val/psnr", "alignment.method=cameo")]
    # the baseline's best PSNR, 15, first at step 400; CAMEO reaches 15 at step 200
    assert (psnr["baseline_best"], psnr["baseline_steps"], psnr["steps"]) == (15.0, 400, 200)
    assert psnr["ratio"] == 0.5 and psnr["ratio_ci95"] == [0.5, 0.5]  # identical seeds
    denoise = rows[("val/denoise_t500", "alignment.method=cameo")]  # lower is better
    assert (denoise["baseline_best"], denoise["baseline_steps"], denoise["steps"]) == (
        0.3,
        300,
        200,
    )
    assert rows[("val/psnr", "alignment.method=none")]["ratio"] == 1.0
    assert {p.name for p in out.iterdir()} == {
        "compare.json",
        "compare.csv",
        "val_psnr.png",
        "val_denoise_t500.png",
    }
    assert (out / "compare.csv").read_text().startswith("metric,method,baseline")
    assert "0.50" in result.output


def test_groups_by_glob_and_seeds_give_an_interval(tmp_path: Path) -> None:
    base = {"val/psnr": [10.0, 12.0, 14.0, 15.0]}
    runs = [
        fake_run(tmp_path / "a-s0", "none", 0, base),
        fake_run(tmp_path / "a-s1", "none", 1, {"val/psnr": [11.0, 13.0, 15.0, 16.0]}),
        fake_run(tmp_path / "b-s0", "none", 2, {"val/psnr": [15.0, 16.0, 16.0, 16.0]}),
        fake_run(tmp_path / "b-s1", "none", 3, {"val/psnr": [12.0, 13.0, 14.0, 16.0]}),
    ]
    out = tmp_path / "out"
    result = compare(*runs, "--out", out, "--group", "a=a-*", "--group", "b=b-*", "--baseline", "a")
    assert result.exit_code == 0, result.output
    row = next(
        r for r in json.loads((out / "compare.json").read_text())["steps_to_baseline_best"]
        if r["method"] == "b"
    )  # fmt: skip
    # a's mean curve peaks at 15.5 (step 400); b's mean (13.5, 14.5, 15, 16) reaches it at 400
    assert (row["baseline_best"], row["steps"], row["ratio"]) == (15.5, 400, 1.0)
    low, high = row["ratio_ci95"]
    assert low <= 1.0 <= high and low < high  # resampled seeds move the reach step
    assert compare(*runs, "--out", out).exit_code == 2  # exists: needs --overwrite


def test_a_metric_of_one_method_is_plotted_for_it_and_not_tabulated(tmp_path: Path) -> None:
    psnr = {"val/psnr": [10.0, 12.0, 14.0, 15.0]}
    head = {**psnr, "val/precision_head": [0.1, 0.2, 0.3, 0.4]}  # CAMEO's head: CAMEO only
    runs = [fake_run(tmp_path / f"base-s{s}", "none", s, psnr) for s in (0, 1)]
    runs += [fake_run(tmp_path / f"cameo-s{s}", "cameo", s, head) for s in (0, 1)]
    out = tmp_path / "out"
    result = compare(*runs, "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert data["metrics"] == ["val/precision_head", "val/psnr"]
    assert {r["metric"] for r in data["steps_to_baseline_best"]} == {"val/psnr"}
    assert (out / "val_precision_head.png").is_file()
    # a metric only the baseline logs leaves nothing to compare
    only_base = [fake_run(tmp_path / f"b{s}", "none", s, head) for s in (0, 1)]
    only_base += [
        fake_run(tmp_path / f"c{s}", "cameo", s, {"val/psnr_x0": [1.0] * 4}) for s in (0, 1)
    ]
    result = compare(*only_base, "--out", tmp_path / "out2")
    assert result.exit_code == 2
    assert "shares no held-out metric with the other methods" in result.output


def test_reference_lines_are_drawn_on_the_psnr_plots_and_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt

    from cameo_cli.compare import plots

    drawn: dict[str, dict[str, tuple[float, ...]]] = {}

    def record(path: Path, figure) -> None:  # the horizontal lines of each figure, by label
        axis = figure.axes[0]
        drawn[path.name] = {
            line.get_label(): tuple(line.get_ydata())
            for line in axis.get_lines()
            if len(set(line.get_ydata())) == 1
        }
        plt.close(figure)

    monkeypatch.setattr(plots, "save_figure", record)
    curves = {
        "val/psnr": [10.0, 12.0, 14.0, 15.0],
        "val/psnr_x0": [11.0, 12.0, 13.0, 14.0],
        "val/denoise_t500": [0.5, 0.4, 0.3, 0.3],
    }
    runs = [
        fake_run(
            tmp_path / f"{method}-s{seed}",
            method,
            seed,
            curves,
            {
                "val/line_flat_psnr": 17.0 + seed,  # the seeds' validation batches differ
                "val/line_copy_psnr": 18.0,
                "val/line_reproject_psnr": 28.0,
                "val/line_reproject_seen": 0.9,
            },
        )
        for method in ("none", "cameo")
        for seed in (0, 1)
    ]
    out = tmp_path / "out"
    result = compare(*runs, "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert data["metrics"] == ["val/denoise_t500", "val/psnr", "val/psnr_x0"]  # no curves
    lines = data["reference_lines"]
    assert lines["val/line_flat_psnr"] == {
        "value": 17.5,
        "methods": {"alignment.method=none": 17.5, "alignment.method=cameo": 17.5},
    }
    assert lines["val/line_reproject_seen"]["value"] == pytest.approx(0.9)
    psnr_lines = {"flat 17.50": (17.5, 17.5), "copy 18.00": (18.0, 18.0),
                  "reproject 28.00": (28.0, 28.0)}  # fmt: skip
    assert drawn["val_psnr.png"] == drawn["val_psnr_x0.png"] == psnr_lines
    assert drawn["val_denoise_t500.png"] == {}
    assert "reference lines" in result.output and "val/line_copy_psnr" in result.output


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("one-run", "at least two runs"),
        ("no-metrics-file", "no metrics.jsonl"),
        ("no-held-out", "no held-out metrics"),
        ("mismatched", "logged no val/psnr"),
        ("same-recipe", "one method"),
        ("bad-group", "matches none"),
        ("bad-baseline", "not one of the methods"),
    ],
)
def test_bad_input_is_one_line_exit_2(damage: str, message: str, tmp_path: Path) -> None:
    runs = planted(tmp_path)
    args: list[object] = [*runs]
    if damage == "one-run":
        args = runs[:1]
    elif damage == "no-metrics-file":
        (runs[0] / "metrics.jsonl").unlink()
    elif damage == "no-held-out":
        (runs[0] / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    elif damage == "mismatched":
        (runs[0] / "metrics.jsonl").write_text('{"step": 100, "val/denoise_t500": 0.5}\n')
    elif damage == "same-recipe":
        args = runs[:2]
    elif damage == "bad-group":
        args += ["--group", "base=base-*"]
    else:
        args += ["--baseline", "nothing"]
    result = compare(*args, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_json_lines_reader_drops_a_cut_last_line_only(tmp_path: Path) -> None:
    from cameo_cli.errors import CameoError

    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
    assert read_json_lines(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(CameoError, match=r"m.jsonl:2: not a JSON line"):
        read_json_lines(path)


@pytest.mark.slow
def test_compare_runs_written_by_real_trainings(synthetic_dataset: Path, tmp_path: Path) -> None:
    from cameo_cli.train.loop import run_training

    runs = []
    for method in ("none", "cameo"):
        recipe = load_recipe(
            "quickstart-cpu",
            [
                f"data.dataset={synthetic_dataset}",
                f"alignment.method={method}",
                "train.steps=2",
                "train.validate_every=1",
                "train.checkpoint_every=2",
                "sample.steps=2",
            ],
        )
        run_training(recipe, tmp_path / method, command=["pytest"])
        runs.append(tmp_path / method)
    out = tmp_path / "out"
    result = compare(*runs, "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert "alignment.method=none" in data["baseline"]  # the trainer resolves CAMEO's layer
    assert {"val/psnr", "val/psnr_x0", "val/sharpness"} <= set(data["metrics"])
    assert {"val/line_flat_psnr", "val/line_copy_psnr", "val/line_reproject_psnr"} <= set(
        data["reference_lines"]
    )
    for run in runs:  # the lines at the first of the two validations, sharpness at both
        logged = [r for r in read_json_lines(run / "metrics.jsonl") if "val/psnr" in r]
        assert ["val/line_copy_psnr" in r for r in logged] == [True, False]
        assert all(r["val/sharpness"] > 0 for r in logged)
    for metric in data["metrics"]:
        assert (out / f"{metric.replace('/', '_')}.png").stat().st_size > 0
