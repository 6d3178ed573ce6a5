"""Manifest parquet: explicit schema, nulls and lists, determinism, and stable video ids."""
from __future__ import annotations

import os
import re

import pyarrow.parquet as pq
import pytest

from ic_data.manifest import (
    MANIFEST_SCHEMA,
    ManifestRow,
    read_manifest,
    reason_counts,
    status_counts,
    video_id_for,
    write_manifest,
)


def example_rows() -> list[ManifestRow]:
    return [
        ManifestRow(
            video_id="b-00000002",
            path="/data/b.mp4",
            status="ok",
            reason="",
            cuts=[0, 120, 244],
            dissolves=[[60, 75], [200, 212]],
            wipes=[[90, 104]],
            flashes=[[130, 131], [150, 152]],
            scene_start=120,
            scene_end=244,
            num_frames=250,
            fps=29.97,
            width=640,
            height=272,
            motion_score=4.5,
            shard="shards/shard-000000.tar",
            key="b-00000002",
            chunk="chunk-0000",
            caption="a cyclist rides down a hill",
            camera_only=False,
            flow_backend="opencv_dis",
            tracker_backend="opencv_lk",
        ),
        ManifestRow(video_id="a-00000001", path="/data/a.mp4", status="failed", reason="decode_error"),
        ManifestRow(
            video_id="c-00000003",
            path="/data/c.mp4",
            status="filtered",
            reason="low_motion",
            cuts=[],
            num_frames=90,
            fps=25.0,
            motion_score=0.1,
        ),
    ]


def test_round_trip_keeps_values_nulls_and_lists(tmp_path):
    path = tmp_path / "manifest.parquet"
    rows = example_rows()
    write_manifest(path, rows)
    read = read_manifest(path)
    assert [r.video_id for r in read] == ["a-00000001", "b-00000002", "c-00000003"]
    assert read == sorted(rows, key=lambda r: r.video_id)
    failed, ok, filtered = read
    assert failed.cuts is None and failed.fps is None and failed.camera_only is None
    assert filtered.cuts == [] and ok.cuts == [0, 120, 244]
    assert ok.dissolves == [[60, 75], [200, 212]] and failed.dissolves is None
    assert ok.wipes == [[90, 104]] and failed.wipes is None
    assert ok.flashes == [[130, 131], [150, 152]] and failed.flashes is None
    assert ok.camera_only is False and ok.fps == 29.97


def test_file_has_the_explicit_schema(tmp_path):
    path = tmp_path / "manifest.parquet"
    write_manifest(path, example_rows())
    assert pq.read_schema(path).remove_metadata().equals(MANIFEST_SCHEMA)


def test_empty_manifest_writes_and_reads(tmp_path):
    path = tmp_path / "manifest.parquet"
    write_manifest(path, [])
    assert read_manifest(path) == []
    assert pq.read_schema(path).remove_metadata().equals(MANIFEST_SCHEMA)


def test_all_null_columns_keep_their_types(tmp_path):
    path = tmp_path / "manifest.parquet"
    write_manifest(path, [ManifestRow(video_id="x", path="x.mp4", status="failed", reason="too_short")])
    table = pq.read_table(path)
    assert table.schema.field("motion_score").type == MANIFEST_SCHEMA.field("motion_score").type
    assert table.schema.field("cuts").type == MANIFEST_SCHEMA.field("cuts").type
    assert read_manifest(path)[0].motion_score is None


def test_write_is_deterministic_and_order_independent(tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_manifest(first, example_rows())
    write_manifest(second, list(reversed(example_rows())))
    assert first.read_bytes() == second.read_bytes()


def test_write_is_atomic(tmp_path):
    path = tmp_path / "manifest.parquet"
    write_manifest(path, example_rows())
    assert os.listdir(tmp_path) == ["manifest.parquet"]
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_manifest(path, example_rows() + [ManifestRow(video_id="a-00000001", path="p", status="ok")])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["manifest.parquet"]


def test_duplicate_video_ids_are_rejected(tmp_path):
    rows = [ManifestRow("v", "a.mp4", "ok"), ManifestRow("v", "b.mp4", "failed", "decode_error")]
    with pytest.raises(ValueError, match="duplicate"):
        write_manifest(tmp_path / "m.parquet", rows)


def test_unknown_status_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="status"):
        write_manifest(tmp_path / "m.parquet", [ManifestRow("v", "a.mp4", "skipped")])


def test_status_and_reason_counts():
    rows = example_rows() + [
        ManifestRow("d", "d.mp4", "filtered", "low_motion"),
        ManifestRow("e", "e.mp4", "failed", None),
    ]
    assert status_counts(rows) == {"ok": 1, "filtered": 2, "failed": 2}
    assert reason_counts(rows) == {"low_motion": 2, "decode_error": 1, "unknown": 1}
    assert status_counts([]) == {"ok": 0, "filtered": 0, "failed": 0}


# ---------------------------------------------------------------- video ids

SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def test_video_id_is_safe_readable_and_stable(tmp_path):
    root = tmp_path / "videos"
    video_id = video_id_for(str(root / "000" / "clip.v2 (final).mp4"), str(root))
    assert SAFE.match(video_id) and "." not in video_id
    assert video_id.startswith("000_clip_v2_final-")
    assert re.search(r"-[0-9a-f]{8}$", video_id)
    assert video_id == video_id_for(root / "000" / "clip.v2 (final).mp4", root)


def test_video_id_depends_on_the_relative_path_only(tmp_path):
    first = video_id_for("/mnt/a/webvid/000/1066678825.mp4", "/mnt/a/webvid")
    second = video_id_for("/scratch/copy/000/1066678825.mp4", "/scratch/copy/")
    assert first == second
    relative = video_id_for("webvid/000/1066678825.mp4", "webvid")
    assert relative == first


def test_a_long_name_gives_an_id_that_files_can_be_named_after(tmp_path):
    """A 250-character file name (legal on ext4) or a deep folder: the id keeps the start and the
    end of the path, stays unique, and its preview files can be written."""
    from ic_data.manifest import MAX_READABLE_ID

    root = tmp_path / "videos"
    long_name = root / ("v" * 246 + ".mp4")
    deep = root.joinpath(*["folder%d_%s" % (i, "x" * 60) for i in range(6)], "clip.mp4")
    ids = [video_id_for(long_name, root), video_id_for(long_name.with_suffix(".webm"), root),
           video_id_for(deep, root), video_id_for(root / "short.mp4", root)]
    assert len(set(ids)) == 4 and all(SAFE.match(i) for i in ids)
    assert [len(i) for i in ids[:3]] == [MAX_READABLE_ID + 9] * 3 and ids[3].startswith("short-")
    assert ids[2].startswith("folder0_") and "__" in ids[2] and re.search(r"_clip-[0-9a-f]{8}$", ids[2])
    (tmp_path / "previews").mkdir()
    for i in ids:
        (tmp_path / "previews" / f"{i}.small.gif").write_bytes(b"")


def test_video_ids_stay_unique_when_sanitising_collides():
    root = "/data"
    paths = ["/data/a b.mp4", "/data/a_b.mp4", "/data/a-b.mp4", "/data/a.b.mp4", "/data/a b.webm",
             "/data/a/b.mp4", "/data/a_b/x.mp4", "/data/a/b_x.mp4"]
    ids = [video_id_for(p, root) for p in paths]
    assert len(set(ids)) == len(ids)
    assert all(SAFE.match(i) for i in ids)


def test_video_id_rejects_paths_outside_the_root():
    with pytest.raises(ValueError, match="root"):
        video_id_for("/elsewhere/x.mp4", "/data")


def test_a_folder_is_refused_by_name_and_points_at_the_manifest(tmp_path):
    """A curation's OUT folder (which pyarrow would read as one table of its parquet files)."""
    write_manifest(tmp_path / "manifest.parquet", [])
    with pytest.raises(ValueError, match=r"is a folder, not a manifest file \(the curation's is OUT/manifest.parquet\)"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path / "manifest.parquet") == []
