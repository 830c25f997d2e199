"""cameo diagnose: metric definitions, rotation bins, a planted layer, perturbation effects."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cameo_cli.diagnose.job import (
    DiagnoseRequest,
    collate,
    default_recipe,
    evaluation_views,
    layer_precision,
    open_diagnose_dataset,
    over_training_layer,
    probe3d_pairs,
    recommend,
)
from cameo_cli.diagnose.job import load_model as load_diagnosed_model
from cameo_cli.diagnose.request import Diagnosis
from cameo_cli.errors import CameoError
from cameo_cli.geometry import correspondence_targets, resize_point_map
from cameo_cli.match_precision import (
    ROTATION_BINS,
    Radii,
    chance_counts,
    lift,
    rotation_bins,
    score_matches,
    shuffled_keys,
    token_footprints,
)
from tests.navi_fixture import STEP_DEG, write_navi


@pytest.fixture(scope="module")
def navi_dataset(tmp_path_factory: pytest.TempPathFactory):
    """Two NAVI scenes (v1.0 and v1.5 names) of 8 views 25 degrees apart, prepared."""
    from rich.console import Console

    from cameo_cli.data.navi import NaviSource
    from cameo_cli.data.shards import prepare_dataset

    folder = tmp_path_factory.mktemp("navi")
    root = write_navi(folder / "raw", {"multiview_00_pixel4a": 8, "multiview-01-pixel5": 8})
    prepare_dataset(NaviSource(root), folder / "prepared", console=Console(quiet=True))
    return folder / "prepared"


def yaw_camera(degrees: float) -> torch.Tensor:
    """A w2c rotating the world by `degrees` about the y axis, centred at the origin."""
    angle = math.radians(degrees)
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[0, 0], w2c[0, 2] = math.cos(angle), math.sin(angle)
    w2c[2, 0], w2c[2, 2] = -math.sin(angle), math.cos(angle)
    w2c[:3, 3] = torch.tensor([0.3, -0.1, 2.0])
    return w2c


def test_rotation_bins_with_hand_built_cameras():
    angles = [0.0, 20.0, 29.0, 31.0, 45.0, 75.0, 89.0, 91.0, 120.0, 179.0]
    w2c = torch.stack([yaw_camera(a) for a in angles])[None]
    bins = rotation_bins(w2c)[0]
    expected = [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert bins[0].tolist() == expected
    assert bins[:, 0].tolist() == expected  # symmetric
    assert bins[4, 8].item() == 2  # 45 -> 120: 75 degrees apart
    assert bins.diagonal().tolist() == [0] * len(angles)
    assert ROTATION_BINS == ("0-30", "30-60", "60-90", ">90")


def test_score_matches_counts_each_metric_by_hand():
    """One pair (view 0 -> view 1) on a 2 x 3 grid, stride (4, 8) px, four query tokens."""
    grid, stride = (2, 3), (4.0, 8.0)
    # tokens: 0 1 2 / 3 4 5
    target = torch.zeros(1, 2, 2, 6, dtype=torch.long)
    predicted = torch.zeros_like(target)
    mask = torch.zeros(1, 2, 2, 6, dtype=torch.bool)
    target[0, 0, 1, :4] = torch.tensor([0, 1, 4, 2])
    predicted[0, 0, 1, :4] = torch.tensor([0, 2, 1, 3])
    mask[0, 0, 1, :4] = True
    mask[0, 0, 0] = True  # the diagonal is never scored
    # distances: exact; 1 token / 8 px across; 1 token / 4 px down; sqrt(1+4) tokens, 4+16 px
    points = torch.zeros(1, 2, 6, 3)
    points[0, 0, :, 0] = torch.arange(6.0)  # query points
    points[0, 1, :, 0] = torch.tensor([0.0, 0.9, 1.05, 3.0, 9.0, 9.0])  # key points
    valid = torch.ones(1, 2, 6, dtype=torch.bool)
    valid[0, 1, 3] = False  # query 3 predicts a key without geometry: never 3D-correct
    bins = torch.zeros(1, 2, 2, dtype=torch.long)
    bins[0, 0, 1] = 2
    radii = Radii(1.0, 4.0, (1.0, 10.0, 60.0))
    args = (predicted, target, mask, grid, stride, points, valid, bins, radii)
    counts = score_matches(*args, metres_per_unit=torch.ones(1))
    assert counts.metrics == ("exact", "tokens", "pixels", "3d@1cm", "3d@10cm", "3d@60cm")
    assert counts.rows.tolist() == [0, 0, 4, 0]
    exact, tokens, pixels, *world = counts.hits[:, 2].tolist()
    assert exact == 1  # query 0
    assert tokens == 3  # queries 0, 1, 2
    assert pixels == 2  # queries 0, 2 (query 1 is 8 px away)
    # 3D: q0 -> key0 (0 m), q1 -> key2 (0.05 m), q2 -> key1 (1.1 m), q3 has no key point
    assert world == [1, 2, 2]
    # a world unit of half a metre: q2 is 0.55 m off, within 60 cm
    halved = score_matches(*args, metres_per_unit=torch.tensor([0.5]))
    assert halved.hits[3:, 2].tolist() == [1, 2, 3]
    summary = counts.summary()
    assert summary["precision"]["tokens"] == pytest.approx(0.75)
    assert summary["precision"]["3d@10cm"] == pytest.approx(0.5)
    assert summary["by_rotation"]["0-30"]["precision"]["exact"] is None
    # unitless data: within one token footprint (here 0.06 world units at every query)
    footprints = torch.full((1, 2, 2, 6), 0.06)
    unitless = score_matches(*args, footprints=footprints)
    assert unitless.metrics[-1] == "3d@1tok" and unitless.hits[3:, 2].tolist() == [2]
    with pytest.raises(ValueError, match="not both"):
        score_matches(*args)


def test_token_footprint_is_depth_times_stride_over_focal():
    """A point 2 in front of camera 0 and 3 in front of camera 1 (moved back by 1), f = 100
    px, 8 px per token: one token spans 0.16 and 0.24 world units there."""
    w2c = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
    w2c[0, 1, 2, 3] = 1.0
    K = torch.tensor([[100.0, 0, 16], [0, 100.0, 16], [0, 0, 1]], dtype=torch.float64)
    points = torch.tensor([0.3, -0.2, 2.0], dtype=torch.float64).expand(1, 2, 1, 3)
    footprints = token_footprints(points, K.expand(1, 2, 3, 3), w2c, (8.0, 8.0))
    assert footprints.shape == (1, 2, 2, 1)
    assert torch.allclose(
        footprints[0, :, :, 0], torch.tensor([[0.16, 0.24], [0.16, 0.24]]).double()
    )


def plant(hook, capture):
    """Route the hook's captured q/k through `capture(q, k) -> (q, k, scale)`."""
    original = hook.capture

    def planted(q, k, scale):
        original(*capture(q, k))

    hook.capture = planted


def geometric_queries_and_keys(batch, grid, heads):
    """q·k = α (|p_q|² - |p_q - p_k|²): every head's argmax key is the nearest 3D point."""
    points, valid = resize_point_map(batch.point_map, batch.point_valid, grid)
    points = points.flatten(-2).transpose(-1, -2).double()  # [B, F, hw, 3]
    valid = valid.flatten(-2)
    alpha = 1e4
    q = torch.cat([2 * alpha * points, -alpha * torch.ones_like(points[..., :1])], dim=-1)
    k = torch.cat([points, (points**2).sum(-1, keepdim=True)], dim=-1)
    k[~valid] = torch.tensor([0.0, 0.0, 0.0, 1e9], dtype=k.dtype)  # never the nearest
    expand = (-1, -1, heads, -1, -1)
    return q[:, :, None].expand(*expand), k[:, :, None].expand(*expand)


def test_planted_layer_scores_one_and_random_layer_scores_chance(synthetic_dataset):
    request = DiagnoseRequest(backbone="cat3d", dataset=synthetic_dataset, out=None)
    model = load_diagnosed_model(request, None, torch.device("cpu"))
    dataset = open_diagnose_dataset(synthetic_dataset, model.recipe)
    # the three training scenes: views of one reference each, so they form one batch
    views = [v for v in evaluation_views(dataset, 4) if not v[0].startswith("synth-test-")]
    batch = collate(dataset, views)
    planted_layer, random_layer = 10, 11
    grid = model.backbone.token_grid(planted_layer, (32, 32))
    heads = model.backbone.layers(32)[planted_layer].heads
    q_true, k_true = geometric_queries_and_keys(batch, grid, heads)
    plant(model.backbone.hooks[planted_layer], lambda q, k: (q_true, k_true, 1.0))
    gen = torch.Generator().manual_seed(0)

    def random_qk(q, k):
        return torch.randn(q.shape, generator=gen), torch.randn(k.shape, generator=gen), 1.0

    plant(model.backbone.hooks[random_layer], random_qk)
    diagnosis = Diagnosis(request, model, dataset, views)
    summaries = layer_precision(diagnosis, [planted_layer, random_layer])
    planted, random = (s["attention"] for s in summaries)
    hw = grid[0] * grid[1]
    assert planted["rows"] > 1000 and planted["rows"] == random["rows"]
    assert planted["precision"]["exact"] == 1.0
    assert planted["precision"]["tokens"] == 1.0 and planted["precision"]["pixels"] == 1.0
    assert 0.2 / hw < random["precision"]["exact"] < 3.0 / hw
    for layer in summaries:  # chance from shuffled keys: about 1 / hw, whatever the layer
        assert 0.5 / hw < layer["chance"]["exact"] < 1.5 / hw
    assert planted["lift"]["exact"] == 1.0 - summaries[0]["chance"]["exact"]

    # 3D precision of the planted layer: the share of kept rows whose nearest key point
    # lies within the radius, computed here directly from the ground truth.
    targets = correspondence_targets(batch.point_map, batch.point_valid, grid)
    points, _ = resize_point_map(batch.point_map, batch.point_valid, grid)
    points = points.flatten(-2).transpose(-1, -2)
    keys = (
        points[:, None]
        .expand(-1, 4, -1, -1, -1)
        .gather(3, targets.index[..., None].expand(-1, -1, -1, -1, 3))
    )
    distance = (keys - points[:, :, None]).norm(dim=-1)
    mask = targets.mask & ~torch.eye(4, dtype=torch.bool)[None, :, :, None]
    stride = (32 / grid[0], 32 / grid[1])
    footprint = token_footprints(points, batch.intrinsics, batch.world_to_camera, stride)
    expected = (distance[mask] <= footprint[mask]).double().mean().item()
    # the synthetic rooms are not metric: the 3D radius is one token footprint, which the
    # nearest key point mostly lies within (a fixed 2-unit-cm radius gave 0.000 here)
    assert planted["precision"]["3d@1tok"] == pytest.approx(expected) and expected > 0.5


def test_perturbation_cross_view_effects():
    """Change view 0's input and watch view 2's output.

    With every multi-view layer perturbed (identity attention) nothing flows between views,
    so view 2 is unchanged; perturbing a per-view layer on top keeps it so. Leaving one
    multi-view layer unperturbed lets view 0 reach view 2 again.
    """
    from cameo_cli.backbone import ViewConditioning
    from cameo_cli.registry import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("cat3d", variant="tiny", in_channels=3).eval()
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 3, 32, 32, generator=gen)
    changed = latents.clone()
    changed[:, 0] = torch.randn(3, 32, 32, generator=gen)
    w2c = torch.stack([yaw_camera(10.0 * v).float() for v in range(4)])[None]
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]]).expand(1, 4, 3, 3)
    cond = ViewConditioning(K, w2c, torch.tensor([[True, False, False, False]]), (32, 32))
    timesteps = torch.tensor([500.0])
    # give the zero-initialised camera encoder weights, so that the cameras enter too
    with torch.no_grad():
        for param in backbone.parameters():
            if param.abs().sum() == 0 and param.dim() > 1:
                param.normal_(0, 0.02, generator=gen)

    def view_change(perturbed: list[int]) -> tuple[float, float]:
        with torch.no_grad(), backbone.perturb(perturbed):
            first = backbone(latents, timesteps, cond)
            second = backbone(changed, timesteps, cond)
        return (first[:, 2] - second[:, 2]).abs().max().item(), first[:, 0].abs().sum().item()

    multiview = sorted(backbone.multiview_layers)
    per_view = sorted(set(range(len(backbone.hooks))) - set(multiview))
    assert multiview and per_view
    coupled, _ = view_change([])
    assert coupled > 1e-4  # unperturbed: view 0 reaches view 2
    cut, view0 = view_change(multiview)
    assert cut == 0.0
    cut_too, view0_perturbed = view_change([*multiview, per_view[0]])
    assert cut_too == 0.0  # a per-view perturbation leaves other views alone ...
    assert view0_perturbed != view0  # ... while it does change its own view's output
    for layer in (multiview[0], multiview[-1]):
        reopened, _ = view_change([m for m in multiview if m != layer])
        assert reopened > 1e-6, layer  # one multi-view layer suffices to couple the views


def test_models_without_checkpoint_take_the_matching_recipe():
    assert default_recipe("cat3d", "tiny") == "quickstart-cpu"
    assert default_recipe("cat3d", "full") == "cat3d-re10k"
    with pytest.raises(CameoError, match="pass --recipe"):
        default_recipe("my-plugin", "full")


def test_over_training_follows_supervised_then_default_then_recommended_layer(
    synthetic_dataset,
):
    request = DiagnoseRequest(backbone="cat3d", dataset=synthetic_dataset, out=None)
    model = load_diagnosed_model(request, None, torch.device("cpu"))
    assert model.supervised_layer is None and model.backbone.default_layer == 10
    assert over_training_layer(model, [4, 10], {"layer": 4}) == 10
    assert over_training_layer(model, [4, 6], {"layer": 6}) == 6
    model.supervised_layer = 4
    assert over_training_layer(model, [4, 10], {"layer": 10}) == 4


def test_probe3d_pairs_within_120_degrees_every_fourth_query(navi_dataset):
    request = DiagnoseRequest(backbone="cat3d", dataset=navi_dataset, out=None)
    model = load_diagnosed_model(request, None, torch.device("cpu"))
    dataset = open_diagnose_dataset(navi_dataset, model.recipe)
    pairs = probe3d_pairs(dataset, 2)
    assert pairs == probe3d_pairs(dataset, 2)  # one generator seeded 8: reproducible
    # 16 query images (8 per scene), every 4th kept: queries 0 and 4 of each scene
    assert [(scene.split("__")[1], frames[0]) for scene, frames, _ in pairs] == [
        ("multiview-01-pixel5", 0), ("multiview-01-pixel5", 4),
        ("multiview_00_pixel4a", 0), ("multiview_00_pixel4a", 4),
    ]  # fmt: skip
    for _, (query, partner), refs in pairs:
        # the cameras are STEP_DEG apart about the object: 5 steps (125 degrees) is too far
        assert refs == 1 and 1 <= abs(query - partner) <= 4
        assert 0 < abs(query - partner) * STEP_DEG <= 120


def test_planted_correspondence_scores_one_at_2cm_on_navi(navi_dataset, tmp_path):
    """Metric data (mm): Precision@{1,2,5}cm per layer and rotation bin; a layer whose
    argmax is the true nearest 3D point scores 1.0 at 2 cm. Beyond 120 degrees (the views
    protocol's widest pairs, 175 degrees) much of the sphere one camera sees is hidden from
    the other, and even the true nearest point can lie beyond 2 cm; probe3d stops at 120.
    Pixel space (a 16x16 grid at layer 10), so a token covers about 7 mm of the sphere."""
    from cameo_cli.config import dump_recipe, load_recipe

    recipe = tmp_path / "pixels.yaml"
    dump_recipe(load_recipe("quickstart-cpu", ["codec.kind=none"]), recipe)
    for protocol in ("views", "probe3d"):
        request = DiagnoseRequest(
            backbone="cat3d", dataset=navi_dataset, out=None, protocol=protocol,
            recipe=str(recipe),
        )  # fmt: skip
        model = load_diagnosed_model(request, None, torch.device("cpu"))
        dataset = open_diagnose_dataset(navi_dataset, model.recipe)
        views = evaluation_views(dataset, 2) if protocol == "views" else probe3d_pairs(dataset, 2)
        batch = collate(dataset, views)
        layer = 10
        grid = model.backbone.token_grid(layer, (32, 32))
        heads = model.backbone.layers(32)[layer].heads
        planted = geometric_queries_and_keys(batch, grid, heads)
        plant(model.backbone.hooks[layer], lambda q, k, planted=planted: (*planted, 1.0))
        summary = layer_precision(Diagnosis(request, model, dataset, views), [layer])[0]
        attention = summary["attention"]
        assert list(attention["precision"]) == [
            "exact", "tokens", "pixels", "3d@1cm", "3d@2cm", "3d@5cm"
        ]  # fmt: skip
        assert attention["rows"] > 50, protocol
        assert attention["precision"]["exact"] == 1.0
        assert attention["precision"]["3d@5cm"] == 1.0
        by_rotation = attention["by_rotation"]
        assert by_rotation["0-30"]["rows"] and by_rotation["60-90"]["rows"]
        for name in ("0-30", "30-60", "60-90"):
            assert by_rotation[name]["precision"]["3d@2cm"] in (1.0, None), (protocol, name)
        # 1 cm is below the token footprint (about 7 mm here) plus the sphere's curvature
        assert 0.5 < attention["precision"]["3d@1cm"] < 1.0
        if protocol == "probe3d":
            assert attention["precision"]["3d@2cm"] == 1.0
            assert by_rotation[">90"]["rows"] and by_rotation[">90"]["precision"]["3d@2cm"] == 1.0
            # one direction only: the rows are the query view's tokens with a target
            targets = correspondence_targets(batch.point_map, batch.point_valid, grid)
            assert attention["rows"] == int(targets.mask[:, 0, 1].sum())


def grid_case(batch: int = 16, views: int = 3, grid: tuple[int, int] = (4, 4)):
    """Every query's true key is the same token of the other view (each token once per
    pair); world points on the token grid (one world unit per token), footprints 1."""
    h, w = grid
    hw = h * w
    target = torch.arange(hw).expand(batch, views, views, hw).clone()
    rows = ~torch.eye(views, dtype=torch.bool)[None, :, :, None].expand_as(target).clone()
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    plane = torch.stack([xs, ys, torch.zeros_like(xs)], dim=-1).reshape(hw, 3).double()
    points = plane.expand(batch, views, hw, 3)
    valid = torch.ones(batch, views, hw, dtype=torch.bool)
    bins = torch.zeros(batch, views, views, dtype=torch.long)
    footprints = torch.ones(batch, views, views, hw, dtype=torch.float64)

    def score(predicted, radii):
        return score_matches(
            predicted, target, rows, grid, (8.0, 8.0), points, valid, bins, radii,
            footprints=footprints,
        )  # fmt: skip

    return target, score


@pytest.mark.parametrize("predictor", ["perfect", "constant", "random"])
def test_chance_by_shuffled_keys_is_the_uniform_predictors_share_on_a_known_grid(predictor):
    """4x4 tokens, 8 px each, every token once a target: a uniform key is exact 1/16 of the
    time, within 1 token (or 8 px, or 1 footprint in 3D) of the target 64/256 (corners have
    3 such tokens, edges 4, the inside 5), within 12 px (the 3x3 neighbourhood) 100/256."""
    target, score = grid_case()
    radii = Radii(tokens=1.0, pixels=12.0)
    predicted = {
        "perfect": target,
        "constant": torch.zeros_like(target),
        "random": torch.randint(0, 16, target.shape, generator=torch.Generator().manual_seed(1)),
    }[predictor]
    chance = chance_counts(lambda p: score(p, radii), predicted).summary()["precision"]
    assert chance["exact"] == pytest.approx(1 / 16, abs=0.012)
    assert chance["tokens"] == pytest.approx(64 / 256, abs=0.02)
    assert chance["3d@1tok"] == chance["tokens"]  # a footprint is a token here
    assert chance["pixels"] == pytest.approx(100 / 256, abs=0.02)
    again = chance_counts(lambda p: score(p, radii), predicted).summary()["precision"]
    assert again == chance  # a fixed seed


def test_shuffled_keys_relabel_each_pairs_keys_by_one_permutation():
    predicted = torch.tensor([0, 0, 1, 2, 3, 3]).expand(2, 2, 2, 6)
    shuffled = shuffled_keys(predicted, torch.Generator().manual_seed(0))
    assert shuffled.shape == predicted.shape
    for b, i, j in [(0, 0, 1), (1, 1, 0)]:
        row = shuffled[b, i, j]
        assert row[0] == row[1] and row[4] == row[5]  # the same key, the same new label
        assert len(set(row[[0, 2, 3, 4]].tolist())) == 4  # distinct keys stay distinct


def summary(layer: int, precision: float, chance: float, multiview: bool = True) -> dict:
    scored = {"pixels": precision}
    return {
        "layer": layer,
        "path": f"block.{layer}",
        "multiview": multiview,
        "attention": {"precision": scored, "lift": lift(scored, {"pixels": chance})},
        "chance": {"pixels": chance},
    }


def test_a_layer_at_chance_is_not_recommended_over_one_less_precise_but_above_chance():
    """Layer 6 (2x2 tokens) is right as often as a shuffled key; layer 10 less often, but
    far above its own chance: layer 10 is recommended, and the top 2 run by lift."""
    layers = [summary(6, 0.25, 0.25), summary(10, 0.21, 0.05), summary(3, 0.9, 0.1, False)]
    recommended = recommend(layers, top_k=2)
    assert recommended["layer"] == 10
    assert recommended["lift"] == pytest.approx(0.16)
    assert (recommended["precision"], recommended["chance"]) == (0.21, 0.05)
    assert [row["layer"] for row in recommended["top"]] == [10, 6]
    below = recommend([summary(6, 0.21, 0.25), summary(8, 0.1, 0.08)])
    assert below["layer"] == 8  # the 2x2 layer below its own chance loses to a weak one


def test_lift_is_precision_minus_chance():
    assert lift({"exact": 0.5, "pixels": None}, {"exact": 0.125, "pixels": 0.2}) == {
        "exact": 0.375,
        "pixels": None,
    }


def test_diagnose_scores_the_evaluation_scenes_first(synthetic_dataset):
    """On the synthetic set the evaluation index names only held-out scenes: they come first,
    training scenes only once they run out."""
    request = DiagnoseRequest(backbone="cat3d", dataset=synthetic_dataset, out=None)
    model = load_diagnosed_model(request, None, torch.device("cpu"))
    dataset = open_diagnose_dataset(synthetic_dataset, model.recipe)
    held_out = json.loads((synthetic_dataset / "eval_index.json").read_text())
    scenes = [scene for scene, _, _ in evaluation_views(dataset, len(dataset.scenes))]
    assert scenes[: len(held_out)] == list(held_out)
    assert all(scene.startswith("synth-test-") for scene in held_out)
    assert sorted(scenes) == sorted(dataset.scenes)
