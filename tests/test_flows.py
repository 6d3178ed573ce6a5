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
    # Its creation event carries it: within what the server publishes (1.5 MB by default). At
    # half size these noise-textured clips' three GIFs were 1.64 MB, and the event was dropped.
    assert len(previews.data) < 1_100_000


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
    assert not _transient(None, None, Failed(data=PermissionError(13, "Permission denied", "/out/shards/x.tar")))
    assert not _transient(None, None, Failed(data=OSError(30, "Read-only file system", "/out/shards/x.tar")))
    assert not _transient(None, None, Completed(data=1))


@pytest.mark.parametrize("flow_name, good, bad", [
    ("curate", {"videos": "v", "out": "o"},
     [("chunk_size", 0), ("drop_fraction", 1.0), ("drop_fraction", -0.1), ("processes", -1), ("seed", -1)]),
    ("evaluate", {"set_name": "object", "run": "r"},
     [("steps", 0), ("guidance_scale", float("nan")), ("trajs_scale", -1.0), ("max_cases", 0),
      ("max_reference", 1), ("seed", -1)]),
    ("train-stage", {"stage": "dense"}, [("seed", -1), ("steps", 0)]),
    ("demo", {}, [("seed", -1)]),
])
def test_a_deployment_run_with_a_value_out_of_bounds_is_refused_before_it_starts(flow_name, good, bad):
    """The checks `ic` makes on its flags hold for a deployment's parameters too (`prefect
    deployment run -p …`, the UI's Run form): the schema carries the bounds and the flow's
    parameter validation refuses, naming the parameter, before any work (steps=0 was a
    ZeroDivisionError mid-evaluation, drop_fraction=2 a failure after scoring every video, a
    negative seed a failed row for every video: numpy's generators take no negative seed)."""
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.callables import parameter_schema

    from flows.demo import demo
    from flows.evaluate import evaluate
    from flows.train import train_stage_flow

    flow_fn = {"curate": curate, "evaluate": evaluate, "train-stage": train_stage_flow, "demo": demo}[flow_name]
    flow_fn.validate_parameters(good)  # the defaults pass
    properties = parameter_schema(flow_fn.fn).model_dump()["properties"]
    for name, value in bad:
        with pytest.raises(ParameterTypeError, match=name):
            flow_fn.validate_parameters({**good, name: value})
        assert "minimum" in json.dumps(properties[name]) or "exclusiveMaximum" in json.dumps(properties[name]), name


def test_a_deployment_run_with_a_missing_path_fails_with_its_line(prefect_api, tmp_path, caplog):
    """A deployment's Run form passes its parameters to the flow unchecked (`ic` checks them
    first): a folder, CSV, run or shard set that is not there ends the run Failed with one
    line naming it, not "Flow run encountered an exception" and a traceback."""
    from flows.cache import cache_latents
    from flows.evaluate import evaluate
    from flows.generate import generate
    from flows.train import train_stage_flow

    gone = tmp_path / "gone"
    (tmp_path / "videos").mkdir()
    cases = [
        (curate, dict(videos=str(gone), out=str(tmp_path / "o1")), f"video folder not found: {gone}"),
        (curate, dict(videos=str(tmp_path / "videos"), out=str(tmp_path / "o2"), captions=str(gone / "c.csv")),
         f"{gone / 'c.csv'}: cannot read the captions CSV (No such file or directory)"),
        (generate, dict(run=str(gone), requests=[{"prompt": "", "image": "x.png", "trajectories": [], "out": "x.mp4"}]),
         f"{gone} is not a run folder (it has no config.json): train a stage into it first"),
        (evaluate, dict(set_name="object", run=str(gone)),
         f"{gone} is not a run folder (it has no config.json): train a stage into it first"),
        (cache_latents, dict(shards=str(gone), run=str(gone)),
         f"run {gone} has no trained VAE yet (its vae stage is not done)"),
        # An output folder where nothing can be made: in the first second, not at the first write.
        (curate, dict(videos=str(tmp_path / "videos"), out="/proc/ic/out"),
         "out /proc/ic/out: cannot create files in /proc (No such file or directory)"),
        (train_stage_flow, dict(stage="vae", shards=str(gone), run="/proc/ic/run"),
         "run /proc/ic/run: cannot create files in /proc (No such file or directory)"),
    ]
    for fn, kwargs, line in cases:
        caplog.clear()
        state = fn(**kwargs, return_state=True)
        assert state.is_failed() and state.message == line, (fn.name, state.message)
        assert "Traceback" not in caplog.text, fn.name


def test_a_curation_that_keeps_nothing_says_so(prefect_api, bad_inputs, tmp_path, capsys):
    """Every video broken or refused: the run completes (failures are data), and `ic` ends with
    a line saying the shards are empty and why, rather than only a summary of zeros to read."""
    from flows.cli import main

    assert main(["curate", "webvid", "--videos", str(bad_inputs), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out[captured.out.index("{"):])
    assert summary["counts"] == {"ok": 0, "filtered": 0, "failed": 6}
    assert captured.err.strip().splitlines()[-1] == (
        "ic curate: no clip was kept of 6 videos (3 decode_error, 1 empty_file, 1 too_short, 1 too_small): "
        "the shards are empty; the manifest's reason and error columns say what happened to each")
