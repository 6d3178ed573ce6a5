"""FID/FVD added after a chain ran without them (`--reference-metrics later`, then
`python -m ic_demo.finish`): the lent GPU box cannot carry the metric networks' weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ic_demo.chain import evaluation_settings
from ic_demo.finish import main as finish_main
from ic_demo.scales import SCALES
from ic_demo.world import make_heldout
from ic_model.evaluation.evaluate import (
    ABLATION_TRAJS_SCALES,
    EvalSettings,
    iter_reference_clips,
)
from ic_model.training.run import run_model_config


def _eval_dir(root, name, set_name, mode, frames, sweep):
    d = root / "eval" / name
    (d / "videos").mkdir(parents=True)
    scales = ABLATION_TRAJS_SCALES if sweep else (1.0,)
    key = "CamMC" if set_name == "camera" else "ObjMC"
    cases = [f"case{i}" for i in range(len(frames))]
    metrics = {"set": set_name, "mode": mode, "num_videos": len(cases) * len(scales), "seconds_per_video": 0.1,
               "tracker": "lk", key: 1.0, "by_trajs_scale": {f"{s:g}": {key: 1.0} for s in scales},
               "settings": {"max_reference": 2, "reference": None, "keep_frames": True},
               "cases": [{"case": c, "trajs_scale": s} for s in scales for c in cases]}
    (d / "metrics.json").write_text(json.dumps(metrics))
    np.savez_compressed(d / "frames.npz", **dict(zip(cases, frames)))
    return d


@pytest.fixture(scope="module")
def chain_folder(tmp_path_factory):
    """An OUT/SCALE folder as a deferred chain leaves it: held-out shards, the run's config, two
    evaluations whose frames are (a) the reference clips themselves and (b) noise."""
    root = tmp_path_factory.mktemp("out") / "test"
    scale = SCALES["test"]
    heldout = make_heldout(str(root / "heldout"), scale, seed=0)
    cfg = run_model_config(root / "run", "tiny", num_frames=scale.num_frames, **scale.model)
    same = list(iter_reference_clips(heldout, cfg, 2))  # two clips, two cases: the networks are slow on a CPU
    noise = [np.random.default_rng(i).integers(0, 256, c.shape, dtype=np.uint8) for i, c in enumerate(same)]
    _eval_dir(root, "camera-camera", "camera", "camera", same, sweep=False)
    _eval_dir(root, "object-object", "object", "object", noise, sweep=True)
    (root / "metrics.json").write_text(json.dumps({"context": {"scale": "test", "seed": 0, "command": "the chain",
                                                               "reference_clips": 3, "reference_metrics": "later"}}))
    return root, cfg, same, noise


def test_finish_scores_the_kept_frames_against_the_heldout_clips(chain_folder, tmp_path):
    root, *_ = chain_folder
    assert finish_main([str(root), "--copy-to", str(tmp_path / "top")]) == 0
    report = json.loads((root / "metrics.json").read_text())
    cam, obj = report["variants"]["camera/camera"], report["variants"]["object/object"]
    # The reference clips scored against themselves: both distances vanish; noise is far away.
    assert cam["FID"] < 1.0 and cam["FVD"] < 1.0, cam
    assert obj["FID"] > 100 and obj["FVD"] > 100, obj
    saved = json.loads((root / "eval" / "object-object" / "metrics.json").read_text())
    assert saved["FID"] == obj["FID"] and saved["reference_metrics_from"].startswith("frames.npz")
    assert saved["settings"]["reference"] == str(root / "heldout") and saved["num_reference"] == 2
    assert report["context"]["command"] == "the chain" and "ic_demo.finish" in report["context"]["reference_metrics"]
    md = (root / "report.md").read_text()
    assert "computed afterwards" in md and "not computed yet" not in md
    assert (tmp_path / "top" / "report.md").read_bytes() == (root / "report.md").read_bytes()


def test_finish_refuses_what_it_cannot_finish(chain_folder, tmp_path, capsys):
    import shutil

    assert finish_main([str(tmp_path / "nothing")]) == 2
    root, *_ = chain_folder
    copy = tmp_path / "test"
    shutil.copytree(root, copy)
    d = copy / "eval" / "object-object"
    with np.load(d / "frames.npz") as saved:
        np.savez_compressed(d / "frames.npz", case0=saved["case0"])
    assert finish_main([str(copy)]) == 2
    err = capsys.readouterr().err
    assert "lacks the cases ['case1']" in err and "Traceback" not in err
    (copy / "eval" / "camera-camera" / "frames.npz").write_bytes(b"PK\x03\x04 truncated")
    assert finish_main([str(copy)]) == 2
    assert "frames.npz is unreadable" in capsys.readouterr().err
    (copy / "eval" / "camera-camera" / "frames.npz").unlink()
    assert finish_main([str(copy)]) == 2
    assert "frames.npz is missing" in capsys.readouterr().err
    (copy / "metrics.json").write_text("{}")
    assert finish_main([str(copy)]) == 2
    assert "not a chain's report" in capsys.readouterr().err


def test_the_deferred_chain_keeps_frames_instead_of_scoring():
    now = evaluation_settings(SCALES["test"], "object/object", "object", "heldout", 0)
    later = evaluation_settings(SCALES["test"], "object/object", "object", "heldout", 0, reference_metrics=False)
    assert now["reference"] == "heldout" and "keep_frames" not in now
    assert later["reference"] is None and later["keep_frames"] is True
    EvalSettings(**later)  # the chain builds its settings from these


def test_reference_features_taken_a_few_clips_at_a_time_equal_those_taken_at_once(chain_folder, monkeypatch):
    """The reference set is read REFERENCE_BATCH clips at a time (the paper's 5000 clips, held
    decoded, took 24 GB): a full batch and a last, shorter one give the same FID and FVD."""
    from ic_model.evaluation import evaluate as ev

    root, cfg, _, noise = chain_folder
    results = []
    for batch in (32, 2):
        monkeypatch.setattr(ev, "REFERENCE_BATCH", batch)
        monkeypatch.setattr(ev, "_REFERENCE_FEATURES", {})
        results.append(ev.reference_metrics(noise, str(root / "heldout"), cfg, 3))
    assert results[0]["num_reference"] == results[1]["num_reference"] == 3
    assert results[1]["FID"] == pytest.approx(results[0]["FID"], rel=1e-6)
    assert results[1]["FVD"] == pytest.approx(results[0]["FVD"], rel=1e-6)
