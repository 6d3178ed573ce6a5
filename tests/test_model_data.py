"""The training data loader against synthetic shards whose frames and tracks are known exactly."""
from __future__ import annotations

import io
import shutil
import tarfile
from itertools import islice

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ic_model.training.data as data_module
from ic_data.mp4 import decode_mp4
from ic_data.shards import ClipSample, clip_meta, read_shard, write_shard
from ic_data.synthetic import CameraMotion, MovingObject, linear_path, render_shot
from ic_data.trajectories import tracks_to_flow_maps
from ic_model.config import TrainConfig, tiny_config
from ic_model.training.data import (
    ClipStream,
    ShardError,
    ShardSampleError,
    TrainBatch,
    make_loader,
    shard_paths,
)

CLIP_W, CLIP_H, CLIP_T = 384, 256, 32
COARSE = (6, 12, 24, 48)
PAN = (3.0, -1.5)  # cam_pan's on-screen background velocity, px/frame
CFG = tiny_config(num_frames=8)  # 96×64, kernel 25, σ 2.5; stride 2 leaves starts 0..17
CAMERA_KEYS = {"cam_pan", "cam_zoom"}


def grid_points() -> np.ndarray:
    xs = (np.arange(16) + 0.5) * CLIP_W / 16
    ys = (np.arange(16) + 0.5) * CLIP_H / 16
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)


def make_clip(key: str, shot, camera_only: bool, num_frames: int = CLIP_T) -> ClipSample:
    tracks, visible = shot.track(grid_points())
    return ClipSample(
        key=key,
        frames=shot.frames,
        tracks=tracks,
        visibility=visible,
        sparse=np.array([0, 5], np.int64),
        caption=f"caption of {key}",
        meta=clip_meta(
            source_path=f"synthetic/{key}.mp4", video_id=key, fps=8.0,
            frame_indices=range(num_frames), scale=1.0, crop=(0, 0, CLIP_W, CLIP_H),
            motion_score=1.0, camera_only=camera_only, flow_backend="exact", tracker_backend="exact",
        ),
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of three 32-frame 384×256 clips: ``data/`` holds both, ``nocam/`` only the second.

    Returns (root, truth) with truth[key] = (rendered frames, exact tracks, visibility, camera_only).
    """
    def shot(camera=CameraMotion(), objects=(), seed=0):
        return render_shot(CLIP_T, CLIP_W, CLIP_H, camera, objects, texture_seed=seed, texture_octaves=COARSE)

    def disc(start, velocity, seed):
        return MovingObject(linear_path(start, velocity, CLIP_T), 40.0, texture_seed=seed)

    shots = {
        "cam_pan": (shot(CameraMotion(PAN), seed=1), True),
        "cam_zoom": (shot(CameraMotion((-1.0, 1.0), zoom_per_frame=1.004), seed=2), True),
        "mix_a": (shot(CameraMotion((1.0, 0.5)), [disc((120, 120), (3, 1), 11)], seed=3), False),
        "obj_disc": (shot(objects=[disc((100, 128), (4, 1), 12)], seed=4), False),
        "mix_b": (shot(CameraMotion((-2.0, 0.0)), [disc((250, 100), (-2, 2), 13)], seed=5), False),
        "mix_c": (shot(CameraMotion((0.5, 2.0)), [disc((200, 150), (1, -3), 14)], seed=6), False),
    }
    clips = {key: make_clip(key, s, cam) for key, (s, cam) in shots.items()}
    root = tmp_path_factory.mktemp("model_data")
    (root / "data").mkdir()
    (root / "nocam").mkdir()
    write_shard(root / "data" / "shard-000.tar", [clips[k] for k in ("cam_pan", "cam_zoom", "mix_a")])
    write_shard(root / "data" / "shard-001.tar", [clips[k] for k in ("obj_disc", "mix_b", "mix_c")])
    shutil.copy(root / "data" / "shard-001.tar", root / "nocam" / "shard-001.tar")
    truth = {
        key: (s.frames, clips[key].tracks, clips[key].visibility, cam) for key, (s, cam) in shots.items()
    }
    return root, truth


@pytest.fixture(scope="module")
def decoded(shards):
    """The clips as the loader sees them: decoded from the shards' MP4s."""
    root, _ = shards
    return {s.key: decode_mp4(s.mp4) for s in read_shard(root / "data" / "shard-000.tar")} | {
        s.key: decode_mp4(s.mp4) for s in read_shard(root / "data" / "shard-001.tar")
    }


def stream(urls, **kwargs) -> ClipStream:
    params = dict(batch_size=2, shuffle_buffer=4, seed=0)
    params.update(kwargs)
    return ClipStream(urls, CFG, **params)


def take(iterable, n: int) -> list[TrainBatch]:
    return list(islice(iter(iterable), n))


def assert_same_batch(a: TrainBatch, b: TrainBatch) -> None:
    assert a.keys == b.keys and a.captions == b.captions
    for name in ("pixels", "flow", "camera_only", "num_tracks", "frame_indices"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert len(a.track_indices) == len(b.track_indices)
    for x, y in zip(a.track_indices, b.track_indices):
        assert (x is None and y is None) or torch.equal(x, y)


def expected_flow(tracks: np.ndarray, visibility: np.ndarray, frames: np.ndarray, indices) -> np.ndarray:
    """Flow maps recomputed from the shard's tracks, their pixel centres moved to the model's,
    without the steps of points hidden or outside the frame."""
    clip = (tracks[frames].astype(np.float64) + 0.5) * [CFG.width / CLIP_W, CFG.height / CLIP_H] - 0.5
    return tracks_to_flow_maps(
        clip, indices, height=CFG.height, width=CFG.width,
        kernel_size=CFG.flow_kernel_size, sigma=CFG.flow_sigma, visibility=visibility[frames],
    )


def resized(frames: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(3, T, H, W) in [-1, 1], resized as the loader must (INTER_AREA)."""
    size = (CFG.width, CFG.height)
    out = np.stack([cv2.resize(frames[i], size, interpolation=cv2.INTER_AREA) for i in indices])
    return (out.astype(np.float32) / 127.5 - 1.0).transpose(3, 0, 1, 2)


# ---------------------------------------------------------------- shard lists


def test_shard_paths_accepts_directory_glob_list_and_file(shards, tmp_path):
    root, _ = shards
    both = [str(root / "data" / "shard-000.tar"), str(root / "data" / "shard-001.tar")]
    assert shard_paths(root / "data") == both
    assert shard_paths(str(root / "data" / "shard-*.tar")) == both
    assert shard_paths(both[::-1]) == both[::-1]
    assert shard_paths(both[1]) == both[1:]

    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        shard_paths(tmp_path)
    with pytest.raises(FileNotFoundError, match="no shards match"):
        shard_paths(str(tmp_path / "*.tar"))
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        shard_paths(tmp_path / "missing.tar")
    with pytest.raises(FileNotFoundError, match="empty"):
        shard_paths([])
    write_shard(tmp_path / "empty.tar", [])
    with pytest.raises(ValueError, match="every shard is empty"):
        stream(tmp_path)


def test_rejects_bad_arguments(shards):
    root, _ = shards
    with pytest.raises(ValueError, match="track_mode"):
        stream(root / "data", track_mode="medium")
    with pytest.raises(ValueError, match="rank"):
        stream(root / "data", rank=2, world_size=2)
    with pytest.raises(ValueError, match="min_tracks"):
        stream(root / "data", min_tracks=3, max_tracks=2)


# ---------------------------------------------------------------- content against ground truth


def test_dense_batches_match_ground_truth(shards, decoded):
    root, truth = shards
    batches = take(stream(root / "data", batch_size=3), 3)
    seen = set()
    for batch in batches:
        b, t, h, w = 3, CFG.num_frames, CFG.height, CFG.width
        assert batch.pixels.shape == (b, 3, t, h, w) and batch.pixels.dtype == torch.float32
        assert batch.flow.shape == (b, 2, t, h, w) and batch.flow.dtype == torch.float32
        assert batch.pixels.min() >= -1.0 and batch.pixels.max() <= 1.0
        assert batch.camera_only.dtype == torch.bool and batch.num_tracks.dtype == torch.int64
        assert batch.num_tracks.tolist() == [256] * b and batch.track_indices == [None] * b
        assert batch.frame_indices.shape == (b, t)
        for i, key in enumerate(batch.keys):
            seen.add(key)
            frames, tracks, visible, camera_only = truth[key]
            fi = batch.frame_indices[i].numpy()
            assert np.array_equal(np.diff(fi), np.full(t - 1, 2)) and 0 <= fi[0] <= CLIP_T - 15
            assert batch.captions[i] == f"caption of {key}"
            assert bool(batch.camera_only[i]) is camera_only
            np.testing.assert_array_equal(batch.flow[i].numpy(), expected_flow(tracks, visible, fi, None))
            np.testing.assert_array_equal(batch.pixels[i].numpy(), resized(decoded[key], fi))
            # Against the rendered (not encoded) frames: only H.264 loss remains.
            assert np.abs(batch.pixels[i].numpy() - resized(frames, fi)).mean() < 0.03
            assert not batch.flow[i, :, 0].any()  # frame 0 of the maps is zero
            if key == "cam_pan":
                # A pure pan moves every track by stride·PAN·scale: dy/dx is fixed.
                dx, dy = batch.flow[i, 0, 1:].sum().item(), batch.flow[i, 1, 1:].sum().item()
                assert dx > 0 and dy / dx == pytest.approx(PAN[1] / PAN[0], rel=1e-4)
                assert batch.flow[i, 0].max().item() <= 2 * PAN[0] * CFG.width / CLIP_W + 1e-5
                # Points panned out of view (right) leave the maps rather than pile on the border.
                assert not visible[fi].all()
                unseen = expected_flow(tracks, np.ones_like(visible), fi, None)
                assert np.abs(unseen[:, :, :, -1]).sum() > 1.5 * np.abs(batch.flow[i, :, :, :, -1].numpy()).sum()
    assert len(seen) >= 4  # the shuffle mixes clips from both shards
    assert len({tuple(fi) for b in batches for fi in b.frame_indices.tolist()}) > 1


def test_sparse_tracks_follow_motion_and_match_flow(shards):
    root, truth = shards
    batches = take(stream(root / "data" / "shard-001.tar", batch_size=3, track_mode="sparse"), 4)
    counts, obj_seen = set(), False
    for batch in batches:
        for i, key in enumerate(batch.keys):
            _, tracks, visible, _ = truth[key]
            idx = batch.track_indices[i].numpy()
            counts.add(len(idx))
            assert 1 <= len(idx) <= 8 and batch.num_tracks[i] == len(idx)
            assert np.array_equal(idx, np.unique(idx)) and idx.max() < 256
            fi = batch.frame_indices[i].numpy()
            np.testing.assert_array_equal(batch.flow[i].numpy(), expected_flow(tracks, visible, fi, idx))
            if key == "obj_disc":
                # Static camera: only the ~13 tracks on the disc move, and only they are drawn.
                moving = np.flatnonzero(np.abs(np.diff(tracks[fi], axis=0)).sum(axis=(0, 2)) > 0)
                assert len(moving) >= 8 and set(idx) <= set(moving)
                obj_seen = True
    assert obj_seen and len(counts) > 1


def test_make_loader_with_tiny_defaults_spans_the_clip(shards):
    """tiny's 16 frames at stride 2 span 31 of 32 frames: the start can only be 0 or 1."""
    root, _ = shards
    cfg = TrainConfig(batch_size=2, num_workers=0, shuffle_buffer=4, caption_dropout=0.0)
    batches = take(make_loader(root / "data", tiny_config(), cfg), 4)
    assert batches[0].pixels.shape == (2, 3, 16, 64, 96)
    starts = {row[0] for b in batches for row in b.frame_indices.tolist()}
    assert starts == {0, 1}
    for b in batches:
        assert (b.frame_indices - b.frame_indices[:, :1] == torch.arange(0, 32, 2)).all()


def test_camera_only_filter(shards):
    root, _ = shards
    for batch in take(stream(root / "data", camera_only=True), 3):
        assert set(batch.keys) <= CAMERA_KEYS and batch.camera_only.all()
    for batch in take(stream(root / "data", camera_only=False), 3):
        assert not set(batch.keys) & CAMERA_KEYS and not batch.camera_only.any()
    with pytest.raises(ValueError, match="no camera_only clips in .*RealEstate10K"):
        stream(root / "nocam", camera_only=True)


def test_caption_dropout(shards):
    root, _ = shards
    captions = [c for b in take(stream(root / "data", caption_dropout=0.5), 6) for c in b.captions]
    assert "" in captions and any(captions)
    assert all(c == "" or c.startswith("caption of ") for c in captions)


# ---------------------------------------------------------------- determinism and exact resume


def test_same_seed_same_batches_other_seed_or_rank_differs(shards):
    root, _ = shards
    ours = stream(root / "data", track_mode="sparse")
    first, again = take(ours, 3), take(ours, 3)  # a second pass over the same object
    for a, b in zip(first, take(stream(root / "data", track_mode="sparse"), 3)):
        assert_same_batch(a, b)
    for a, b in zip(first, again):
        assert_same_batch(a, b)

    def signature(batches):
        return [(b.keys, b.frame_indices.tolist(), b.num_tracks.tolist()) for b in batches]

    other_seed = take(stream(root / "data", track_mode="sparse", seed=1), 3)
    rank1 = take(stream(root / "data", track_mode="sparse", rank=1, world_size=2), 3)
    rank0 = take(stream(root / "data", track_mode="sparse", rank=0, world_size=2), 3)
    assert signature(other_seed) != signature(first)
    assert signature(rank1) != signature(rank0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume(shards, num_workers):
    root, _ = shards

    def loader(skip):
        ds = stream(root / "data", track_mode="sparse", caption_dropout=0.5, skip_batches=skip)
        return DataLoader(ds, batch_size=None, num_workers=num_workers)

    straight = take(loader(0), 6)
    resumed = take(loader(3), 3)
    for a, b in zip(straight[3:], resumed):
        assert_same_batch(a, b)
    assert len({tuple(b.keys) + tuple(b.frame_indices.flatten().tolist()) for b in straight}) == 6


def test_workers_interleave_distinct_streams(shards):
    """Two workers give different streams; a single-process stream of role 0 is worker 0's."""
    root, _ = shards
    two = take(DataLoader(stream(root / "data"), batch_size=None, num_workers=2), 4)
    single = take(stream(root / "data"), 2)
    assert_same_batch(two[0], single[0])
    assert_same_batch(two[2], single[1])
    assert (two[0].keys, two[0].frame_indices.tolist()) != (two[1].keys, two[1].frame_indices.tolist())


def test_skipped_samples_are_not_decoded(shards, monkeypatch):
    root, _ = shards
    calls = {"mp4": 0, "flow": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(data_module, "decode_mp4", counted("mp4", decode_mp4))
    monkeypatch.setattr(data_module, "tracks_to_flow_maps", counted("flow", tracks_to_flow_maps))
    take(stream(root / "data", skip_batches=5), 2)
    assert calls == {"mp4": 2 * 2, "flow": 2 * 2}


# ---------------------------------------------------------------- malformed data


def shard_members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npy_header(descr: str, shape: tuple) -> bytes:
    """A version-1.0 .npy header for ``shape`` followed by 16 bytes of data, not the array's."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1") + bytes(16)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda name, data: None if name.endswith(".tracks.npy") else data, "lacks the 'tracks.npy'"),
        (lambda name, data: b"\x00junk" * 100 if name.endswith(".mp4") else data, "undecodable mp4"),
        (
            lambda name, data: npy(np.zeros((32, 256, 3), np.float32)) if name.endswith(".tracks.npy") else data,
            r"tracks must be \(T, N, 2\)",
        ),
        (lambda name, data: b"{}" if name.endswith(".json") else data, "json lacks the boolean 'camera_only'"),
        (lambda name, data: b"[1, 2]" if name.endswith(".json") else data, "json is a list, not an object"),
        (lambda name, data: "café".encode("latin-1") if name.endswith(".txt") else data, "txt is not UTF-8 text"),
        # A header declaring 20 billion floats: refused before anything is allocated.
        (lambda name, data: npy_header("<f4", (20_000_000_000,)) if name.endswith(".visibility.npy") else data,
         r"unreadable visibility.npy: its header declares a float32 array of shape \(20000000000,\)"),
        (lambda name, data: npy(np.array([{"a": 1}], dtype=object)) if name.endswith(".tracks.npy") else data,
         "unreadable tracks.npy: Object arrays cannot be loaded when allow_pickle=False"),
    ],
    ids=["missing-member", "bad-mp4", "bad-shape", "bad-json", "json-list", "latin-1-txt", "npy-bomb", "npy-pickle"],
)
def test_malformed_sample_names_shard_and_key(shards, tmp_path, edit, message):
    root, _ = shards
    members = shard_members(root / "data" / "shard-000.tar")
    bad = [(n, edit(n, p)) for n, p in members if n.startswith("cam_zoom.")]
    path = tmp_path / "bad.tar"
    write_tar(path, [(n, p) for n, p in bad if p is not None])
    with pytest.raises(ShardSampleError, match=rf"shard .*bad\.tar, sample 'cam_zoom': {message}"):
        take(stream(path, batch_size=1, shuffle_buffer=1), 1)


def test_malformed_sample_error_crosses_worker_processes(shards, tmp_path):
    root, _ = shards
    members = shard_members(root / "data" / "shard-000.tar")
    path = tmp_path / "bad.tar"
    write_tar(path, [(n, b"junk" if n.endswith(".mp4") else p) for n, p in members])
    loader = DataLoader(stream(path, batch_size=1), batch_size=None, num_workers=1)
    with pytest.raises(ShardSampleError, match="^shard .*bad.tar, sample .*: undecodable mp4") as caught:
        take(loader, 1)
    assert "\n" not in str(caught.value)  # the worker's traceback is not part of the message


@pytest.mark.parametrize("damage", ["truncated", "not-a-tar"])
@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_unreadable_shard_is_one_error_naming_it(shards, tmp_path, damage, num_workers):
    root, _ = shards
    data = (root / "data" / "shard-000.tar").read_bytes()
    bad = tmp_path / "bad.tar"
    # Cut inside the last member's data: tar only finds it when it reaches the end.
    bad.write_bytes(data[: len(data) * 3 // 4] if damage == "truncated" else np.random.default_rng(0).bytes(40_000))
    # Scanned first for a camera_only filter; found while streaming without one.
    for camera_only in (None, True):
        with pytest.raises(ShardError, match=r"^shard .*bad\.tar: not a readable tar file \(ReadError: ") as caught:
            take(DataLoader(stream(bad, batch_size=1, shuffle_buffer=1, camera_only=camera_only), batch_size=None,
                            num_workers=num_workers), 100)
        assert "\n" not in str(caught.value) and " @ <" not in str(caught.value)


def test_clip_shorter_than_span_is_an_error(tmp_path):
    shot = render_shot(8, 96, 64, CameraMotion((1.0, 0.0)), texture_seed=7)
    clip = make_clip("short", shot, False, num_frames=8)
    write_shard(tmp_path / "short.tar", [clip])
    with pytest.raises(ShardSampleError, match="8 frames, shorter than the 15-frame span"):
        take(stream(tmp_path, batch_size=1), 1)



def test_tracks_land_where_the_resized_frames_show_what_they_follow():
    """A blob centred on a clip point, resized to the model's 96×64 as the loader resizes frames,
    is centred where the loader puts the point (x·W/384 had been 0.375 model pixels off: 1.5 clip
    pixels), and generation maps a point drawn on that clip frame to the same place."""
    from ic_data.clips import resize_points
    from ic_model.pipelines.image_conductor import prepare_image_and_tracks

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:CLIP_H, 0:CLIP_W]
    for _ in range(5):
        point = rng.uniform([40, 40], [CLIP_W - 40, CLIP_H - 40])
        blob = 250 * np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 6.0**2))
        frame = np.repeat(np.rint(blob).astype(np.uint8)[..., None], 3, axis=2)
        small = cv2.resize(frame, (CFG.width, CFG.height), interpolation=cv2.INTER_AREA)[..., 0].astype(np.float64)
        my, mx = np.mgrid[0 : CFG.height, 0 : CFG.width]
        centre = np.array([(small * mx).sum(), (small * my).sum()]) / small.sum()
        mapped = resize_points(point, (CLIP_W, CLIP_H), (CFG.width, CFG.height))
        assert np.abs(mapped - centre).max() < 0.03, (point, mapped, centre)
        assert np.abs(point * [CFG.width / CLIP_W, CFG.height / CLIP_H] - centre).min() > 0.3  # the old rule
        drawn = prepare_image_and_tracks(frame, [[point.tolist(), point.tolist()]], CFG)
        np.testing.assert_allclose(drawn.tracks[0, 0], mapped, atol=1e-4)
