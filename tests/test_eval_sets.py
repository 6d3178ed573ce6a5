"""Evaluation sets: the paper's two shipped ones, and a user's own set file, read and checked."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ic_model.config import tiny_config
from ic_data.errors import TrajectoryError
from ic_model.evaluation.evalsets import EvalSetError, eval_set_name, read_eval_set, visible_box
from ic_model.evaluation.evaluate import _first_frames
from ic_model.pipelines.image_conductor import prepare_image_and_tracks


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_the_shipped_sets_are_the_papers_ten_cases_each():
    for name in ("camera", "object"):
        s = read_eval_set(name)
        assert (s.name, s.kind, s.frame_size, s.path) == (name, name, (384, 256), None)
        assert len(s.cases) == 10 and len({c.id for c in s.cases}) == 10
        assert all(c.kind == name and c.image is None and 1 <= len(c.trajectories) <= 8 for c in s.cases)
    assert all(len(c.trajectories) == 6 for c in read_eval_set("camera").cases)


def test_the_visible_part_of_a_frame_is_what_the_model_frame_shows():
    """visible_box, mapped through the transform every first frame and trajectory goes through,
    lands inside the model frame; one pixel beyond it along the cropped axis lands outside."""
    cfg = tiny_config()
    lo, hi = np.array([-0.5, -0.5]), np.array([cfg.width - 0.5, cfg.height - 0.5])
    for size in [(384, 256), (1280, 720), (720, 1280), (500, 500), (32, 900)]:
        x0, y0, x1, y1 = visible_box(*size)
        cropped = 0 if (x0, x1) != (0, size[0] - 1) else 1  # the axis the 3:2 crop cuts
        step = np.eye(2)[cropped]
        inside = [[x0, y0], [x1, y1]]
        beyond = [np.array([x0, y0]) - step, np.array([x1, y1]) + step]
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        prepared = prepare_image_and_tracks(frame, [[p] for p in inside], cfg)
        mapped = prepared.tracks[0]
        assert np.all(mapped >= lo - 1e-3) and np.all(mapped <= hi + 1e-3), (size, mapped)
        if size == (384, 256):  # nothing is cropped
            assert (x0, y0, x1, y1) == (0, 0, 383, 255)
            continue
        # Through the same transform (source → clip → model pixels), the points beyond land outside,
        # and generation refuses them rather than clamp them to the border.
        to_model = np.array([cfg.width / 384, cfg.height / 256])
        mapped = (prepared.geometry.source_to_clip(np.array(beyond)) + 0.5) * to_model - 0.5
        assert mapped[0, cropped] < lo[cropped] and mapped[1, cropped] > hi[cropped], (size, mapped)
        for point in beyond:
            with pytest.raises(TrajectoryError, match="outside the centre crop the model sees"):
                prepare_image_and_tracks(frame, [[list(point)]], cfg)


def test_a_set_file_is_named_by_its_stem_and_its_images_are_found_beside_it(tmp_path):
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "dog.png"), np.zeros((72, 128, 3), np.uint8))
    spec = _write(tmp_path / "my-set.json", {
        "kind": "camera", "frame_size": [1280, 720], "description": "two cases",
        "cases": [{"id": "dog.left_1", "prompt": "a dog", "trajectories": [[[900, 400], [500, 400.5]]],
                   "image": "images/dog.png"},
                  {"id": "b", "trajectories": [[[97.97, 0]], [[1178.22, 719]]]}]})  # the crop's corners
    s = read_eval_set(spec)
    assert (s.name, s.kind, s.frame_size, s.path) == ("my-set", "camera", (1280, 720), spec)
    assert eval_set_name(spec) == "my-set" and eval_set_name("object") == "object"
    a, b = s.cases
    assert (a.id, a.prompt, a.index, a.image) == ("dog.left_1", "a dog", 0, str(tmp_path / "images" / "dog.png"))
    assert (b.id, b.prompt, b.index, b.image, b.frame_size) == ("b", "", 1, None, (1280, 720))


GOOD_CASE = {"id": "a", "trajectories": [[[20, 20], [50, 30]]]}


@pytest.mark.parametrize("data, message", [
    ([1, 2], ": must be a JSON object with 'kind', 'frame_size' and 'cases', got list"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [GOOD_CASE], "name": "x"},
     ": unknown key(s) ['name']; a set has ['cases', 'description', 'frame_size', 'kind']"),
    ({"kind": "object", "cases": [GOOD_CASE]}, ": missing ['frame_size']"),
    ({"kind": "objects", "frame_size": [64, 64], "cases": [GOOD_CASE]},
     ": 'kind' must be one of ['camera', 'object'], got 'objects'"),
    ({"kind": "object", "frame_size": [64.0, 64], "cases": [GOOD_CASE]},
     ": 'frame_size' must be [width, height], whole numbers of pixels from 32 to 16384, got [64.0, 64]"),
    ({"kind": "object", "frame_size": [64, 64], "cases": []}, ": 'cases' must be a non-empty list of cases"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [dict(GOOD_CASE, id="../up")]},
     (", case 0: 'id' must be 1-100 letters, digits, '.', '_' or '-' (not starting with '.'; it names the "
      "case's files), got '../up'")),
    ({"kind": "object", "frame_size": [64, 64], "cases": [GOOD_CASE, GOOD_CASE]}, ", case 1: id 'a' is used twice"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [dict(GOOD_CASE, prompt=3)]},
     ", case 'a': 'prompt' must be a string, got int"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [GOOD_CASE], "description": {"x": 1}},
     ": 'description' must be text, got dict"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [dict(GOOD_CASE, description=7)]},
     ", case 'a': 'description' must be text, got int"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [[1, 2]]},
     ", case 0: must be an object with 'id' and 'trajectories' (and, if wanted, 'prompt', 'image', 'description'), "
     "got list"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [dict(GOOD_CASE, prompt="a dog " * 2000)]},
     ", case 'a': 'prompt' is 12,000 characters long; at most 10,000 are taken"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [{"id": "a", "trajectory": []}]},
     ", case 0: unknown key(s) ['trajectory']; a case has ['description', 'id', 'image', 'prompt', 'trajectories']"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [{"id": "a"}]}, ", case 'a': missing 'trajectories'"),
    ({"kind": "object", "frame_size": [64, 48], "cases": [{"id": "a", "trajectories": [[[10, 48]]]}]},
     ", case 'a': track 0, point 0: y = 48.0 is outside [0, 47] (frame_size 64×48)"),
    ({"kind": "object", "frame_size": [1280, 720], "cases": [{"id": "a", "trajectories": [[[500, 300], [1200, 300]]]}]},
     (", case 'a': track 0, point 1 (1200, 300) is outside the centre crop the model sees, x 97.97–1178.22 and "
      "y 0–719 of 1280×720: it could not be tracked")),
    ({"kind": "object", "frame_size": [64, 64], "cases": [dict(GOOD_CASE, image="nope.png")]},
     ", case 'a': image 'nope.png' not found (looked at {dir}/nope.png)"),
    ({"kind": "object", "frame_size": [64, 64], "cases": [dict(GOOD_CASE, image=".")]},
     ", case 'a': image '.' is a folder, not an image file ({dir})"),
])
def test_a_bad_set_file_is_one_error_naming_the_field(tmp_path, data, message):
    spec = _write(tmp_path / "s.json", data)
    with pytest.raises(EvalSetError) as err:
        read_eval_set(spec)
    assert str(err.value) == f"evaluation set {spec}" + message.format(dir=tmp_path)


def test_what_is_not_a_set_file_is_named(tmp_path):
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{")
    for spec, message in [
        ("cam", "evaluation set 'cam': give camera or object, or the path of a set file (JSON); no such file"),
        (str(tmp_path), (f"evaluation set '{tmp_path}': give camera or object, or the path of a set file (JSON); "
                         "it is a folder")),
    ]:
        with pytest.raises(EvalSetError) as err:
            read_eval_set(spec)
        assert str(err.value) == message
    with pytest.raises(EvalSetError, match=r"bin.json: not a readable JSON file \('utf-8' codec can't decode"):
        read_eval_set(str(tmp_path / "bin.json"))
    (tmp_path / "twice.json").write_text('{"kind": "object", "frame_size": [384, 256], "cases": [], "kind": "camera"}')
    with pytest.raises(EvalSetError, match=r"twice.json: not a readable JSON file \(the key 'kind' is given twice\)"):
        read_eval_set(str(tmp_path / "twice.json"))  # was read as the last kind, unsaid
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # was a bare RecursionError
    with pytest.raises(EvalSetError, match=r"deep.json: not a readable JSON file \(nested too deeply\)"):
        read_eval_set(str(tmp_path / "deep.json"))


def test_a_case_image_that_does_not_decode_is_named_when_the_set_is_read(tmp_path):
    """Found before the weights load and the cases before it run (it was found when its case
    came): a text file, a file cut short, a format not read."""
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "whole.jpg"), rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:600])
    (tmp_path / "text.png").write_text("not an image")
    for name, why in (("text.png", "text.png is not an image in a format read here"),
                      ("cut.jpg", "cannot decode image")):
        spec = _write(tmp_path / "s.json", {"kind": "object", "frame_size": [64, 64],
                                              "cases": [dict(GOOD_CASE, image=name)]})
        with pytest.raises(EvalSetError) as err:
            read_eval_set(spec)
        assert str(err.value).startswith(f"evaluation set {spec}, case 'a': image '{name}': ") and why in str(err.value)


def test_an_image_and_its_trajectories_reach_the_model_together(tmp_path):
    """A 1280×720 image with a white square centred at (820, 420), in a set drawn at 640×360
    pixels: the track starting on the square's centre (410, 210) lands on it in the model frame,
    after the image is brought to frame_size and centre-cropped. The synthetic frame of a case
    without an image puts the object at its track's start, at the set's frame_size."""
    image = np.full((720, 1280, 3), 40, np.uint8)
    image[400:440, 800:840] = 255
    cv2.imwrite(str(tmp_path / "square.png"), image)
    spec = _write(tmp_path / "s.json", {"kind": "object", "frame_size": [640, 360], "cases": [
        {"id": "square", "trajectories": [[[410, 210], [300, 200]]], "image": "square.png"},
        {"id": "synthetic", "trajectories": [[[500, 100], [300, 200]]]}]})
    cases = read_eval_set(spec).cases
    frames = _first_frames(cases, None, seed=0)
    assert [f.shape for f in frames] == [(360, 640, 3), (360, 640, 3)]
    ys, xs = np.nonzero(cv2.cvtColor(frames[1], cv2.COLOR_RGB2HSV)[..., 1] > 150)  # the vivid object
    assert abs(xs.mean() - 500) < 2 and abs(ys.mean() - 100) < 2
    cfg = tiny_config()
    for case, frame, found in [(cases[0], frames[0], lambda im: im.mean(-1) > 150),
                               (cases[1], frames[1], lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2HSV)[..., 1] > 150)]:
        prepared = prepare_image_and_tracks(frame, case.trajectories, cfg)
        assert prepared.image.shape == (cfg.height, cfg.width, 3)
        ys, xs = np.nonzero(found(prepared.image))
        start = prepared.tracks[0, 0]
        assert abs(xs.mean() - start[0]) < 1.0 and abs(ys.mean() - start[1]) < 1.0, (case.id, xs.mean(), ys.mean(), start)


def test_evaluate_refuses_more_steps_than_the_noise_schedule_before_any_work(tmp_path):
    from types import SimpleNamespace

    from ic_data.errors import BadInputError
    from ic_model.evaluation.evaluate import EvalSettings, evaluate_set

    pipe = SimpleNamespace(cfg=SimpleNamespace(num_train_timesteps=1000))  # never called
    with pytest.raises(BadInputError, match=r"^steps must be from 1 to 1000 \(the noise schedule's length\), "
                                            r"got 1001$"):
        evaluate_set(pipe, "object", tmp_path / "out", EvalSettings(steps=1001))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=r"^EvalSettings: steps must be a whole number ≥ 1, got 0$"):
        EvalSettings(steps=0)  # refused when made, whatever the model


@pytest.mark.parametrize("change, message", [
    (dict(max_cases=-9), "max_cases must be a whole number ≥ 1, got -9"),  # ran 1 case of 10
    (dict(max_cases=0), "max_cases must be a whole number ≥ 1, got 0"),  # reported ObjMC NaN
    (dict(tracker="bogus"), "tracker must be 'lk' or 'cotracker', got 'bogus'"),  # failed after a video
    (dict(seed=-1), "seed must be a whole number in [0, 9223372036854775807], got -1"),
    (dict(mode="objects"), "mode must be 'camera' or 'object' or 'none' or 'base', got 'objects'"),
])
def test_evaluation_settings_out_of_range_are_refused_when_made(change, message):
    from ic_model.evaluation.evaluate import EvalSettings

    with pytest.raises(ValueError) as err:
        EvalSettings(**change)
    assert str(err.value) == f"EvalSettings: {message}"


def test_evaluation_settings_take_every_tracker_the_factory_takes():
    from ic_data.tracking import TRACKERS
    from ic_model.evaluation.evaluate import EvalSettings

    assert set(TRACKERS) == {"lk", "cotracker"}
    for tracker in TRACKERS:
        assert EvalSettings(tracker=tracker).tracker == tracker


def test_what_would_stop_fid_and_fvd_is_named_before_any_video_is_generated(tmp_path, monkeypatch):
    """A missing reference, a single video to score (FVD needs the covariance of at least two)
    and missing network weights each failed only after every video had been generated."""
    from types import SimpleNamespace

    from ic_data.errors import BadInputError
    from ic_data.synthetic import write_synthetic_shards
    from ic_model.evaluation.evaluate import EvalSettings, evaluate_set

    pipe = SimpleNamespace(cfg=SimpleNamespace(num_train_timesteps=1000))  # never called
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match=f"^reference {tmp_path / 'nope'}: .*does not exist$"):
        evaluate_set(pipe, "object", out, EvalSettings(steps=2, reference=str(tmp_path / "nope")))
    shards = write_synthetic_shards(tmp_path / "reference", num_mixed=1, num_camera=1)
    with pytest.raises(BadInputError, match=f"^reference {shards}: FID and FVD need at least 2 generated videos, "
                                            "this evaluation makes 1 "):
        evaluate_set(pipe, "object", out, EvalSettings(steps=2, reference=str(shards), max_cases=1))
    monkeypatch.setenv("IC_FID_INCEPTION", str(tmp_path / "inception.pt"))
    monkeypatch.setenv("IC_I3D_WEIGHTS", str(tmp_path / "i3d.pt"))
    with pytest.raises(BadInputError) as caught:
        evaluate_set(pipe, "object", out, EvalSettings(steps=2, reference=str(shards)))
    first, second = str(caught.value).split("; reference ")
    assert first.startswith(f"reference {shards}: FID Inception weights: $IC_FID_INCEPTION = "
                            f"'{tmp_path / 'inception.pt'}' is not a file"), first
    assert second.startswith(f"{shards}: I3D weights file '{tmp_path / 'i3d.pt'}' does not exist"), second
    assert not out.exists()
    with pytest.raises(ValueError, match="max_reference must be a whole number ≥ 2, got 1"):
        EvalSettings(reference=str(shards), max_reference=1)  # FVD needs two reference clips too


def test_a_reference_that_is_no_shard_of_clips_is_named_before_any_video_is_generated(tmp_path):
    """A picture, an empty file, a tar of something else, an empty tar: each was found only when
    FID/FVD began, after every video had been generated."""
    import tarfile
    from types import SimpleNamespace

    from ic_data.errors import BadInputError
    from ic_data.synthetic import write_synthetic_shards
    from ic_model.evaluation.evaluate import EvalSettings, evaluate_set

    pipe = SimpleNamespace(cfg=SimpleNamespace(num_train_timesteps=1000))  # never called
    cv2.imwrite(str(tmp_path / "frame.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "note.txt").write_text("hi")
    with tarfile.open(tmp_path / "other.tar", "w") as tar:
        tar.add(tmp_path / "note.txt", arcname="note.txt")
    tarfile.open(tmp_path / "none.tar", "w").close()
    good = write_synthetic_shards(tmp_path / "good", num_mixed=1, num_camera=1)
    (good / "aa.tar").write_text("not a tar")  # a damaged shard before good ones
    for reference, words in ((tmp_path / "frame.png", "not a readable tar file"),
                             (tmp_path / "empty.tar", "not a readable tar file"),
                             (tmp_path / "other.tar", r"sample 'note': lacks members"),
                             (tmp_path / "none.tar", "its shards hold no clips"),
                             (good, "aa.tar: not a readable tar file")):
        with pytest.raises(BadInputError, match=f"^reference {reference}: .*{words}"):
            evaluate_set(pipe, "object", tmp_path / "out", EvalSettings(steps=2, reference=str(reference)))
    assert not (tmp_path / "out").exists()


def test_reference_clips_are_refused_naming_the_clip_where_shorter_than_the_videos(tmp_path):
    """A 4-frame reference clip used to be spread over the model's 8 frames by repeating its
    frames, a stutter that FVD scores as a difference."""
    from types import SimpleNamespace

    from ic_data.errors import BadInputError
    from ic_data.shards import ClipSample, clip_meta, write_shard
    from ic_data.synthetic import write_synthetic_shards
    from ic_model.evaluation.evaluate import iter_reference_clips

    cfg = SimpleNamespace(num_frames=8, width=96, height=64)
    shards = write_synthetic_shards(tmp_path / "reference", num_mixed=2, num_camera=2)
    clips = list(iter_reference_clips(str(shards), cfg, 3))
    assert len(clips) == 3 and all(c.shape == (8, 64, 96, 3) for c in clips)
    frames = np.random.default_rng(0).integers(0, 256, (4, 256, 384, 3), dtype=np.uint8)
    short = ClipSample(key="short", frames=frames, tracks=np.zeros((4, 256, 2), np.float32),
                       visibility=np.ones((4, 256), bool), sparse=np.array([0]), caption="",
                       meta=clip_meta(source_path="short.mp4", video_id="short", fps=8.0, frame_indices=range(4),
                                      scale=1.0, crop=(0, 0, 384, 256), motion_score=1.0, camera_only=False,
                                      flow_backend="exact", tracker_backend="exact"))
    write_shard(shards / "zz-short.tar", [short])
    with pytest.raises(BadInputError, match=f"^reference clip 'short' of {shards / 'zz-short.tar'}: 4 frames, "
                                            "fewer than the 8 of the generated videos"):
        list(iter_reference_clips(str(shards), cfg, 100))
    assert len(list(iter_reference_clips(str(shards), SimpleNamespace(num_frames=4, width=96, height=64), 100))) == 5


def test_a_first_frame_is_enlarged_no_more_than_generation_enlarges_one(tmp_path):
    """ic generate refuses a 1×1 image (it would need 384× upscaling, limit 16×); an evaluation
    case with one is refused alike, naming the case and the image, not scored on a flat frame."""
    from ic_data.errors import BadInputError

    cv2.imwrite(str(tmp_path / "dot.png"), np.full((1, 1, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "small.png"), np.full((16, 24, 3), 200, np.uint8))  # 16×: the limit
    spec = _write(tmp_path / "s.json", {"kind": "object", "frame_size": [384, 256], "cases": [
        {"id": "small", "trajectories": [[[10, 10], [20, 20]]], "image": "small.png"},
        {"id": "dot", "trajectories": [[[10, 10], [20, 20]]], "image": "dot.png"}]})
    cases = read_eval_set(spec).cases
    assert _first_frames(cases[:1], None, seed=0)[0].shape == (256, 384, 3)
    with pytest.raises(BadInputError, match=r"case dot: the image .*dot\.png is 1x1, .*384\.0x .*limit 16x"):
        _first_frames(cases, None, seed=0)


def test_an_ablation_sweep_with_a_trajs_scale_of_its_own_is_refused():
    """--ablation sweeps λ_trajs over 1, 1.1, 1.3, 1.5 itself: a --trajs-scale beside it would be
    used by no video, yet recorded in metrics.json."""
    from ic_model.evaluation.evaluate import guidance_problems

    assert guidance_problems("object", 1.0, True) == [] and guidance_problems("object", 1.3, False) == []
    (problem,) = guidance_problems("object", 1.2, True)
    assert problem.startswith("trajs_scale 1.2 with ablation: the sweep sets λ_trajs itself (1, 1.1, 1.3, 1.5)")


@pytest.mark.parametrize("size", [(96, 64), (384, 256)])
def test_background_points_keep_off_the_objects_at_any_model_size(size):
    """The background motion of the object set is measured on grid points away from the drawn
    tracks. The margin was 12 model pixels: the toy objects' whole radius at 96×64, but at
    384×256 a quarter of it, and 23 of the shipped set's 349 background points lay on an object
    in frame 0, whose own motion then counted as the camera's."""
    from ic_data.synthetic import TOY_OBJECT_SCALE
    from ic_model.evaluation.evaluate import background_points

    width, height = size
    to_model = np.array([width / 384, height / 256])
    radius = 0.09 * 256 * TOY_OBJECT_SCALE  # synthetic_first_frame's objects, in 384×256 pixels
    counts = []
    for case in read_eval_set("object").cases:
        tracks = np.stack([resample(t) for t in case.trajectories], axis=1) * to_model
        points = background_points(tracks, width, height)
        starts = np.array([t[0] for t in case.trajectories], np.float64)
        on_object = np.linalg.norm((points / to_model)[:, None] - starts[None], axis=-1) <= radius
        assert not on_object.any(), (case.id, points[on_object.any(axis=1)])
        counts.append(len(points))
    assert sum(counts) >= 150, counts  # most of the picture is still background


def resample(track):
    from ic_data.trajectories import resample_trajectory

    return resample_trajectory(track, 16)
