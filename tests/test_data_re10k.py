"""RealEstate10K: the real camera file, frames on disk, frames from a video, pixelSplat chunks."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from cameo_cli.cli import main
from cameo_cli.data.dataset import MultiViewDataset, load_eval_index
from cameo_cli.data.re10k import RealEstate10KSource, extract_video_frames, parse_pose_file
from cameo_cli.data.shards import prepare_dataset
from cameo_cli.errors import CameoError

SAMPLE = Path("/work/shared/data/re10k-sample/0bf152ef84195293.txt")
if not SAMPLE.is_file():  # the repository's copy of the same public file
    SAMPLE = Path(__file__).parent / "data" / "re10k" / "0bf152ef84195293.txt"
CLIP = SAMPLE.stem
QUIET = Console(quiet=True)


def _png(width: int = 64, height: int = 36, value: int = 0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _raw_root(tmp_path: Path, lines: list[str] | None = None) -> Path:
    """<root>/test/<clip>.txt + one PNG per pose timestamp in <root>/test/<clip>/."""
    split = tmp_path / "re10k" / "test"
    (split / CLIP).mkdir(parents=True)
    text = SAMPLE.read_text() if lines is None else "\n".join(lines) + "\n"
    (split / f"{CLIP}.txt").write_text(text)
    for k, line in enumerate(text.splitlines()[1:]):
        (split / CLIP / f"{line.split()[0]}.png").write_bytes(_png(value=k))
    return split.parent


def test_real_camera_file_parses():
    url, poses, skipped = parse_pose_file(SAMPLE)
    assert url.startswith("https://www.youtube.com/") and not skipped
    assert len(poses) == 16
    assert poses[0].timestamp_us == 158692025
    for pose in poses:
        rot = pose.world_to_camera[:3, :3]
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-5)
        assert np.isclose(np.linalg.det(rot), 1.0, atol=1e-5)
        assert pose.intrinsics_normalized[0, 0] == pytest.approx(0.474812461)


def test_raw_release_with_frames(tmp_path):
    root = _raw_root(tmp_path)
    report = prepare_dataset(
        RealEstate10KSource(root, split="test"), tmp_path / "out", console=QUIET
    )
    assert report.scenes == 1 and report.frames == 16 and report.skipped == []
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    scene = index["scenes"][CLIP]
    assert scene["width"] == 64 and scene["height"] == 36 and scene["split"] == "test"
    assert scene["frames"][0] == "158692025"
    ds = MultiViewDataset(tmp_path / "out", num_views=4)
    item = ds.get_views(CLIP, [0, 1, 2, 3], num_refs=2)
    K = item["intrinsics"][0]
    assert K[0, 0].item() == pytest.approx(0.474812461 * 64, rel=1e-6)
    assert K[1, 1].item() == pytest.approx(0.844111024 * 36, rel=1e-6)
    assert K[0, 2].item() == pytest.approx(32.0) and K[1, 2].item() == pytest.approx(18.0)
    assert not ds.has_geometry and "point_map" not in item
    expected = np.asarray(Image.open(io.BytesIO(_png(value=2))), dtype=np.float32) / 127.5 - 1
    assert np.allclose(item["images"][2].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_bad_frames_and_poses_are_reported_not_fatal(tmp_path):
    lines = SAMPLE.read_text().splitlines()
    fields = lines[3].split()
    fields[8] = "nan"  # a NaN in the rotation
    lines[3] = " ".join(fields)
    fields = lines[4].split()
    fields[7] = str(float(fields[7]) * 1.5)  # a scaled (non-orthonormal) rotation row
    lines[4] = " ".join(fields)
    lines[5] = " ".join(lines[5].split()[:10])  # a truncated pose line
    root = _raw_root(tmp_path, lines)
    frames = root / "test" / CLIP
    stamps = [line.split()[0] for line in lines[1:]]
    truncated = frames / f"{stamps[6]}.png"
    truncated.write_bytes(truncated.read_bytes()[:200])  # a truncated image
    (frames / f"{stamps[7]}.png").unlink()  # a pose line without its frame
    (frames / "999.png").write_bytes(_png())  # a frame without a pose line
    report = prepare_dataset(
        RealEstate10KSource(root, split="test"), tmp_path / "out", console=QUIET
    )
    reasons = {skip.item: skip.reason for skip in report.skipped}
    assert report.scenes == 1 and report.frames == 16 - 5
    assert "non-finite" in reasons[f"{CLIP}/{stamps[2]}"]
    assert "not orthonormal" in reasons[f"{CLIP}/{stamps[3]}"]
    assert "expected 19 numbers" in reasons[f"{CLIP}/line 6"]
    assert "unreadable image" in reasons[f"{CLIP}/{stamps[6]}"]
    assert "without a frame" in reasons[f"{CLIP}/{stamps[7]}"]
    assert "without a pose line" in reasons[f"{CLIP}/999.png"]


def test_numbered_frames_must_match_the_pose_count(tmp_path):
    root = _raw_root(tmp_path)
    frames = root / "test" / CLIP
    for k, path in enumerate(sorted(frames.iterdir())):
        path.rename(frames / f"{k:05d}.png")
    source = RealEstate10KSource(root, split="test")
    assert len(source.load_scene(CLIP).frames) == 16  # numbered one-to-one: accepted
    (frames / "00015.png").unlink()
    report = prepare_dataset(source, tmp_path / "out", console=QUIET)
    assert report.scenes == 0 and report.skipped[0].item == CLIP
    assert "16 pose lines but 15 frames" in report.skipped[0].reason


def test_mixed_frame_names_sort_numbers_first(tmp_path):
    lines = SAMPLE.read_text().splitlines()[:5]
    root = _raw_root(tmp_path, lines)
    frames = root / "test" / CLIP
    for path, name in zip(sorted(frames.iterdir()), ["10", "9", "b", "a"], strict=True):
        path.rename(frames / f"{name}.png")
    scene = RealEstate10KSource(root, split="test").load_scene(CLIP)
    # the frames in order 9, 10, a, b: written from pose lines 1, 0, 3, 2
    expected = [np.asarray(Image.open(io.BytesIO(_png(value=k)))) for k in (1, 0, 3, 2)]
    assert all(np.array_equal(f.image, e) for f, e in zip(scene.frames, expected, strict=True))


def test_missing_split_folder_is_a_clear_error(tmp_path):
    root = _raw_root(tmp_path)
    with pytest.raises(CameoError, match=r"re10k/train: no 'train' split folder"):
        RealEstate10KSource(root, split="train")


def test_empty_root_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    result = CliRunner().invoke(
        main, ["prepare", "re10k", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "no scenes found" in result.output


def _write_video(path: Path, num_frames: int, fps: int, start_frames: int = 0) -> None:
    """Frame k: left half grey 8 (k % 30), right half grey 8 (k // 30) (robust to coding);
    the stream starts ``start_frames`` frames after zero (its ``start_time``)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.gop_size = 8
        stream.codec_context.time_base = Fraction(1, fps)
        for k in range(num_frames):
            image = np.full((48, 64, 3), 8 * (k % 30), dtype=np.uint8)
            image[:, 32:] = 8 * (k // 30)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = k + start_frames, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _frame_number(image: np.ndarray) -> int:
    return round(float(image[:, 4:26].mean()) / 8) + 30 * round(float(image[:, 38:60].mean()) / 8)


def test_frames_extracted_from_a_video_land_at_their_timestamps(tmp_path):
    video = tmp_path / "clip.mp4"
    _write_video(video, num_frames=100, fps=10)
    numbers = [2, 3, 9, 17, 29, 95, 99]  # 17 -> 95 jumps (seeks) over 7.8 s
    found = extract_video_frames(video, [k * 100_000 for k in numbers] + [20_000_000])
    assert [_frame_number(found[k * 100_000]) for k in numbers] == numbers
    # a timestamp off the frame grid by less than half a frame picks the nearest frame
    assert _frame_number(extract_video_frames(video, [4_040_000])[4_040_000]) == 40
    assert found[20_000_000] == "timestamp beyond the end of the video"


def test_frame_times_count_from_the_stream_start(tmp_path):
    video = tmp_path / "late.mp4"
    _write_video(video, num_frames=100, fps=10, start_frames=15)  # start_time 1.5 s
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert float(stream.start_time * stream.time_base) == pytest.approx(1.5)
    numbers = [0, 2, 9, 40, 95]
    found = extract_video_frames(video, [k * 100_000 for k in numbers])
    assert [_frame_number(found[k * 100_000]) for k in numbers] == numbers


def test_raw_release_with_local_videos(tmp_path):
    lines = ["https://www.youtube.com/watch?v=test"]
    pose = SAMPLE.read_text().splitlines()[1].split()[1:]
    lines += [" ".join([str(k * 100_000), *pose]) for k in (1, 4, 6, 20)]
    split = tmp_path / "root" / "train"
    split.mkdir(parents=True)
    (split / "clipa.txt").write_text("\n".join(lines) + "\n")
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "clipa.mp4", num_frames=25, fps=10)
    source = RealEstate10KSource(tmp_path / "root", split="train", videos=videos)
    scene = source.load_scene("clipa")
    assert [f.name for f in scene.frames] == ["100000", "400000", "600000", "2000000"]
    assert [_frame_number(f.image) for f in scene.frames] == [1, 4, 6, 20]
    assert scene.frames[0].intrinsics[0, 0] == pytest.approx(0.474812461 * 64)


def test_pixelsplat_chunks(tmp_path):
    _, poses, _ = parse_pose_file(SAMPLE)
    cams = torch.tensor(
        np.array(
            [
                [
                    *p.intrinsics_normalized[[0, 1, 0, 1], [0, 1, 2, 2]],
                    0,
                    0,
                    *p.world_to_camera[:3].ravel(),
                ]
                for p in poses
            ]
        ),
        dtype=torch.float32,
    )
    images = [torch.frombuffer(bytearray(_png(value=k)), dtype=torch.uint8) for k in range(16)]
    images[5] = images[5][:100].clone()  # truncated
    example = {
        "url": "https://www.youtube.com/watch?v=x",
        "timestamps": torch.tensor([p.timestamp_us for p in poses]),
        "cameras": cams,
        "images": images,
        "key": CLIP,
    }
    split = tmp_path / "chunks" / "test"
    split.mkdir(parents=True)
    torch.save([example], split / "000000.torch")
    (split / "index.json").write_text(json.dumps({CLIP: "000000.torch", "gone": "000001.torch"}))
    report = prepare_dataset(
        RealEstate10KSource(tmp_path / "chunks", split="test"), tmp_path / "out", console=QUIET
    )
    assert report.scenes == 1 and report.frames == 15
    reasons = {s.item: s.reason for s in report.skipped}
    assert (
        "missing" in reasons["gone"]
        and "unreadable image" in reasons[f"{CLIP}/{poses[5].timestamp_us}"]
    )
    ds = MultiViewDataset(tmp_path / "out")
    K, w2c = ds.reader.cameras(CLIP)
    assert K[0, 0, 0] == pytest.approx(0.474812461 * 64, rel=1e-6)
    assert np.allclose(w2c[0], poses[0].world_to_camera, atol=1e-6)


def test_evaluation_index_file_maps_to_kept_frames(tmp_path):
    root = _raw_root(tmp_path)
    stamps = [line.split()[0] for line in SAMPLE.read_text().splitlines()[1:]]
    bad = root / "test" / CLIP / f"{stamps[1]}.png"
    bad.write_bytes(bad.read_bytes()[:100])  # position 1 is lost: later ones shift by one
    views = tmp_path / "evaluation_index_re10k.json"
    views.write_text(json.dumps({CLIP: {"context": [0, 15], "target": [3, 7]}, "other": None}))
    source = RealEstate10KSource(root, split="test", eval_index=views)
    prepare_dataset(source, tmp_path / "out", console=QUIET)
    evaluation = load_eval_index(tmp_path / "out")
    assert evaluation == {CLIP: {"context": [0, 14], "target": [2, 6]}}
    frames = json.loads((tmp_path / "out" / "index.json").read_text())["scenes"][CLIP]["frames"]
    assert [frames[i] for i in (0, 14, 2, 6)] == [stamps[i] for i in (0, 15, 3, 7)]
    # a view that was skipped removes the scene from the evaluation, with the reason
    views.write_text(json.dumps({CLIP: {"context": [0, 1], "target": [3]}}))
    out = tmp_path / "out2"
    report = prepare_dataset(
        RealEstate10KSource(root, split="test", eval_index=views), out, console=QUIET
    )
    assert load_eval_index(out) == {}
    assert any("context frame(s) [1]" in s.reason for s in report.skipped)


def test_options_of_other_datasets_are_refused(tmp_path):
    result = CliRunner().invoke(
        main, ["prepare", "synthetic", "--videos", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "--videos does not apply to synthetic" in result.output


def test_rerun_after_the_raw_dataset_lost_a_clip(tmp_path):
    root = _raw_root(tmp_path)
    split = root / "test"
    (split / "zzclip.txt").write_text((split / f"{CLIP}.txt").read_text())
    (split / "zzclip").symlink_to(split / CLIP)
    out = tmp_path / "out"
    report = prepare_dataset(
        RealEstate10KSource(root, split="test"), out, scenes_per_shard=1, console=QUIET
    )
    assert report.scenes == 2 and (out / "shards" / "shard-00001.safetensors").exists()
    (split / "zzclip.txt").unlink()
    report = prepare_dataset(
        RealEstate10KSource(root, split="test"), out, scenes_per_shard=1, console=QUIET
    )
    assert report.scenes == 1 and report.shards_reused == 1
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "shard-00000.json",
        "shard-00000.safetensors",
    ]


def test_pixelsplat_chunks_without_index_and_with_broken_examples(tmp_path):
    split = tmp_path / "chunks" / "train"
    split.mkdir(parents=True)
    good = {
        "url": "u",
        "key": "good",
        "timestamps": torch.tensor([0, 1]),
        "cameras": torch.tensor(
            [[0.5, 0.5, 0.5, 0.5, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]] * 2
        ),
        "images": [torch.frombuffer(bytearray(_png(value=k)), dtype=torch.uint8) for k in range(2)],
    }
    torch.save([good, {"key": "nocams", "url": "u"}, {"url": "nokey"}], split / "000000.torch")
    (split / "000001.torch").write_bytes(b"not a torch file")
    report = prepare_dataset(
        RealEstate10KSource(tmp_path / "chunks", split="train"), tmp_path / "o", console=QUIET
    )
    reasons = {s.item: s.reason for s in report.skipped}
    assert report.scenes == 1 and report.frames == 2
    assert "lacks timestamps, cameras, images" in reasons["nocams"]
    assert reasons["000000.torch[2]"] == "example has no key"
    assert "cannot load chunk" in reasons["000001.torch"]
