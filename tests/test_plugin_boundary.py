"""CAMEO lives whole in its plugin (`alignments/cameo/`): the core and the jobs reach it only
through the `AlignmentMethod` contract, so no module of `cameo_cli/` names its loss."""

from __future__ import annotations

from pathlib import Path

import cameo_cli

PACKAGE = Path(cameo_cli.__file__).parent


def modules_naming(word: str, root: Path) -> list[str]:
    """The `.py` files under `root` whose text contains `word`, relative to `root`."""
    return sorted(
        str(path.relative_to(root)) for path in root.rglob("*.py") if word in path.read_text()
    )


def test_no_core_or_job_module_names_cameo_loss():
    assert modules_naming("CameoLoss", PACKAGE) == []


def test_the_search_finds_a_name(tmp_path):
    (tmp_path / "job.py").write_text("from cameo.alignments.cameo.loss import CameoLoss\n")
    (tmp_path / "other.py").write_text("x = 1\n")
    assert modules_naming("CameoLoss", tmp_path) == ["job.py"]


def test_cameo_alignment_keeps_its_import_path_and_offers_its_head_as_scorer():
    from cameo.alignments.cameo import CameoAlignment
    from cameo.alignments.cameo.loss import CameoLoss

    method = CameoAlignment(
        [10], [(2, 2)], [2], [0.02],
        epsilon=1.5, selection="per_pair", head="mlp", loss="ce", chunk_size=None,
    )  # fmt: skip
    assert isinstance(method.losses["10"], CameoLoss)
    assert method.match_scorer(10) == method.losses["10"].predicted_match
    assert method.match_scorer(3) is None
