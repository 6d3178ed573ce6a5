"""The `curate` flow under Prefect: completeness, artifacts, parity with the library and with Dask."""
from __future__ import annotations

import json
import pytest

from ic_data.manifest import read_manifest

pytest.importorskip("prefect")
from conftest import latest_artifact, server_now  # noqa: E402
from flows.curate import curate, make_task_runner  # noqa: E402


@pytest.fixture(scope="module")
def flow_run(prefect_api, input_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow_out")
    started = server_now()
    state = curate(videos=str(input_dir), out=str(out), seed=3, chunk_size=5, return_state=True)
    return out, state, started


def test_flow_completes_with_corrupt_inputs_and_reports_them(flow_run):
    out, state, _ = flow_run
    assert state.is_completed()
    summary = state.result()
    assert summary["num_videos"] == 14
    assert summary["counts"] == {"ok": 6, "filtered": 2, "failed": 6}
    rows = read_manifest(out / "manifest.parquet")
    assert len(rows) == 14 and len({r.video_id for r in rows}) == 14
    assert json.loads((out / "summary.json").read_text()) == summary


def test_flow_output_equals_the_library_output(flow_run, curated_inputs):
    out, _, _ = flow_run
    lib, _ = curated_inputs  # the library's curate, same seed and chunking
    assert (out / "manifest.parquet").read_bytes() == (lib / "manifest.parquet").read_bytes()
    flow_shards = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    assert flow_shards == {p.name: p.read_bytes() for p in (lib / "shards").glob("*.tar")}


def test_artifacts_show_progress_summary_and_previews(flow_run):
    started = flow_run[2]
    progress = latest_artifact("curate-webvid-progress", after=started)
    table = latest_artifact("curate-webvid-summary", after=started)
    previews = latest_artifact("curate-webvid-previews", after=started)
    assert progress is not None and float(progress.data) == 100.0
    assert table is not None and "motion threshold" in str(table.data) and "videos failed" in str(table.data)
    assert previews is not None and previews.data.count("data:image/gif;base64,") == 3


@pytest.mark.e2e
def test_dask_cluster_gives_the_same_manifest(flow_run, input_dir, tmp_path):
    distributed = pytest.importorskip("distributed")
    out, _, _ = flow_run
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        runner = make_task_runner(dask_address=cluster.scheduler_address)
        state = curate.with_options(task_runner=runner)(
            videos=str(input_dir),
            out=str(tmp_path / "dask"), seed=3, chunk_size=5, return_state=True,
        )
    assert state.is_completed()
    assert (tmp_path / "dask" / "manifest.parquet").read_bytes() == (out / "manifest.parquet").read_bytes()


def test_rerun_skips_finished_chunks(flow_run, input_dir):
    out, _, _ = flow_run
    before = {p: p.stat().st_mtime_ns for p in (out / "work").rglob("*.json")}
    state = curate(videos=str(input_dir), out=str(out), seed=3, chunk_size=5, return_state=True)
    assert state.is_completed()
    after = {p: p.stat().st_mtime_ns for p in (out / "work").rglob("*.json")}
    assert before == after, "finished chunk results must be reused, not rewritten"


def test_only_transient_errors_are_retried():
    from prefect.states import Completed, Failed

    from tasks.curation import _transient

    assert _transient(None, None, Failed(data=OSError(28, "No space left on device")))
    assert _transient(None, None, Failed(data=TimeoutError("chunk took too long")))
    assert not _transient(None, None, Failed(data=ValueError("a bug is not transient")))
    assert not _transient(None, None, Completed(data=1))
