"""Trajectory studio without a browser: the model view, the clicked tracks, their JSON, and the
messages the page shows for bad input.

The ground truth for every mapping is `prepare_image_and_tracks`, which is what `ic generate`
runs: what is drawn must be exactly what the model receives from the exported file.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ic_data.errors import TrajectoryError
from ic_data.preview import TRACK_COLOURS
from ic_data.trajectories import load_trajectory_file
from ic_model.config import save_json, tiny_config
from ic_model.pipelines.image_conductor import prepare_image_and_tracks
from ic_studio.drawing import DrawingError, TrajectoryDrawing
from ic_studio.model_view import DISPLAY_HEIGHT, DISPLAY_WIDTH, ModelView

# (width, height): wider and narrower than 3:2, portrait, square, exact, and small (enlarged ×2.2).
SIZES = [(500, 300), (1200, 300), (240, 320), (640, 640), (384, 256), (176, 144)]


def _image(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _configs():
    tiny = tiny_config(num_frames=8)
    full = tiny_config(num_frames=16, width=384, height=256)  # the sd15 frame size, no weights needed
    return [tiny, full]


def _draw(view: ModelView, rng: np.random.Generator) -> TrajectoryDrawing:
    """A path of random clicks, a still anchor, a second path, and the two corners of the frame."""
    d = TrajectoryDrawing(view.display_bounds())
    for _ in range(4):
        d.click(*rng.integers(0, [DISPLAY_WIDTH, DISPLAY_HEIGHT]))
    d.still_anchor()
    d.click(*rng.integers(0, [DISPLAY_WIDTH, DISPLAY_HEIGHT]))
    for _ in range(3):
        d.click(*rng.integers(0, [DISPLAY_WIDTH, DISPLAY_HEIGHT]))
    d.new_track()
    d.click(0, 0)
    d.click(DISPLAY_WIDTH - 1, DISPLAY_HEIGHT - 1)
    return d


@pytest.mark.parametrize("cfg", _configs(), ids=lambda c: f"{c.width}x{c.height}")
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_exported_json_gives_ic_generate_exactly_the_drawn_tracks(size, cfg, tmp_path):
    image = _image(*size)
    view = ModelView.from_image(image, cfg)
    d = _draw(view, np.random.default_rng(sum(size)))
    assert [len(t) for t in d.tracks] == [4, 1, 3, 2]

    path = tmp_path / "tracks.json"
    path.write_text(d.to_json(view))
    # What `ic generate --image ORIGINAL --trajectories tracks.json` does with the file.
    loaded = load_trajectory_file(path, *size)
    prepared = prepare_image_and_tracks(image, [t.tolist() for t in loaded], cfg)
    np.testing.assert_allclose(prepared.tracks, d.model_tracks(view, cfg.num_frames), atol=1e-4)
    # The still anchor is the official stationary point: 1 pixel each way of the 384×256 frame
    # over the clip (in model pixels), the same from the file as from the drawing.
    np.testing.assert_allclose(np.ptp(prepared.tracks[:, 1], axis=0), [cfg.width / 384, cfg.height / 256], atol=1e-4)

    # And the file comes back as the same drawing.
    again = TrajectoryDrawing(view.display_bounds())
    again.load_source(json.loads(path.read_text()), view)
    np.testing.assert_allclose(np.concatenate(again.tracks), np.concatenate(d.tracks), atol=1e-4)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_model_view_is_the_conditioning_image(size):
    cfg = tiny_config(num_frames=8)
    image = _image(*size, seed=3)
    view = ModelView.from_image(image, cfg)
    prepared = prepare_image_and_tracks(image, [[[0, 0]]], cfg, trajectory_space="model")
    np.testing.assert_array_equal(view.model_image, prepared.image)
    assert view.display_image.shape == (DISPLAY_HEIGHT, DISPLAY_WIDTH, 3)
    # Each model pixel is a uniform 4×4 block of the display: averaging gives it back exactly.
    np.testing.assert_array_equal(cv2.resize(view.display_image, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA),
                                  prepared.image)
    # A click on any display pixel lands in the model pixel that pixel shows.
    xy = np.stack(np.meshgrid(np.arange(DISPLAY_WIDTH), np.arange(DISPLAY_HEIGHT)), -1).reshape(-1, 2)
    np.testing.assert_array_equal(np.floor(view.display_to_model(xy) + 0.5), xy // 4)


def test_image_centre_maps_to_frame_centre_for_every_aspect_ratio():
    cfg = tiny_config(num_frames=8)
    for w, h in SIZES:
        view = ModelView.from_image(_image(w, h), cfg)
        centre = view.source_to_display([(w - 1) / 2, (h - 1) / 2])
        np.testing.assert_allclose(centre, [(DISPLAY_WIDTH - 1) / 2, (DISPLAY_HEIGHT - 1) / 2], atol=0.51)


def test_clicks_at_the_frame_edge_stay_inside_an_enlarged_image():
    """176×144 is enlarged ×2.67: its outer pixel centres lie inside the 384×256 frame, and a point
    outside the source image would be rejected by `ic generate`."""
    cfg = tiny_config(num_frames=8)
    view = ModelView.from_image(_image(176, 144), cfg)
    d = TrajectoryDrawing(view.display_bounds())
    d.click(0, 0)
    d.click(DISPLAY_WIDTH - 1, DISPLAY_HEIGHT - 1)
    (start, end), = d.to_source(view)
    assert start[0] == 0 and end[0] == 175  # clamped to the first and last column
    assert 0 < start[1] and end[1] < 143  # rows: cropped away, nothing to clamp
    prepare_image_and_tracks(_image(176, 144), d.to_source(view), cfg)  # accepted


def test_point_collection_new_track_still_anchor_undo_clear():
    d = TrajectoryDrawing((0.0, 0.0, 383.0, 255.0))
    d.click(10, 20)
    d.click(30, 40)
    assert d.tracks == [[(10, 20), (30, 40)]]
    d.still_anchor()
    d.click(50, 60)
    d.click(70, 80)  # after a still anchor the next click starts a new track
    d.click(90, 100)
    assert d.tracks == [[(10, 20), (30, 40)], [(50, 60)], [(70, 80), (90, 100)]]
    d.undo()
    d.undo()  # the last track loses both points and goes away
    assert d.tracks == [[(10, 20), (30, 40)], [(50, 60)]]
    d.undo()  # the still anchor goes
    d.click(5, 5)  # no track is open: a new one starts
    assert d.tracks == [[(10, 20), (30, 40)], [(5, 5)]]
    d.still_anchor()
    d.undo()  # cancels the pending still anchor, takes no point
    assert len(d.tracks) == 2
    d.click(500, -3)  # clamped into the frame
    assert d.tracks[-1][-1] == (383.0, 0.0)
    d.clear()
    assert d.tracks == [] and "Click on the image" in d.summary()


def test_a_click_that_is_not_a_point_is_refused_and_changes_nothing():
    """A raw API call can send NaN: it was stored (np.clip keeps NaN), and every later action
    failed on it until an undo."""
    d = TrajectoryDrawing((0.0, 0.0, 383.0, 255.0))
    d.click(10, 20)
    for x, y in ((float("nan"), 5.0), (5.0, float("inf")), ("5", 5), (True, 5)):
        with pytest.raises(DrawingError, match="is not a point of the image; nothing was added"):
            d.click(x, y)
    d.click(30, 40)
    assert d.tracks == [[(10, 20), (30, 40)]]


def test_at_most_eight_trajectories():
    d = TrajectoryDrawing((0.0, 0.0, 383.0, 255.0))
    for i in range(8):
        d.still_anchor()
        d.click(10 * i, 10)
    d.still_anchor()
    with pytest.raises(DrawingError, match="at most 8"):
        d.click(100, 100)
    assert len(d.tracks) == 8


def test_a_trajectory_takes_at_most_its_points():
    from ic_data.trajectories import MAX_TRACK_POINTS

    d = TrajectoryDrawing((0.0, 0.0, 383.0, 255.0))
    for i in range(MAX_TRACK_POINTS):
        d.click(i % 300, 10)
    with pytest.raises(DrawingError, match=f"at most {MAX_TRACK_POINTS} points"):
        d.click(5, 5)
    assert len(d.tracks) == 1 and len(d.tracks[0]) == MAX_TRACK_POINTS
    d.new_track()
    d.click(5, 5)  # another trajectory still starts
    assert len(d.tracks) == 2


def test_import_rejects_what_ic_generate_rejects():
    view = ModelView.from_image(_image(500, 300), tiny_config(num_frames=8))
    d = TrajectoryDrawing(view.display_bounds())
    with pytest.raises(TrajectoryError, match="outside"):
        d.load_source([[[10, 10], [600, 10]]], view)
    with pytest.raises(TrajectoryError, match="too many tracks"):
        d.load_source([[[1, 1]]] * 9, view)
    with pytest.raises(TrajectoryError, match="track 0: 10,000 points, at most 1,000"):
        d.load_source([[[100 + i % 200, 100] for i in range(10_000)]], view)
    assert d.tracks == []
    # Inside the image, outside the crop the model sees (a portrait photo's top): refused now,
    # not at Generate.
    portrait = ModelView.from_image(_image(256, 640), tiny_config(num_frames=8))
    p = TrajectoryDrawing(portrait.display_bounds())
    with pytest.raises(TrajectoryError, match=r"track 0, point 0 \(5, 5\) is outside the centre crop"):
        p.load_source([[[5, 5], [10, 10]]], portrait)
    p.load_source([[[100, 300], [150, 320]]], portrait)
    assert len(p.tracks) == 1


def test_render_draws_each_track_in_its_colour_with_an_arrow():
    view = ModelView.from_image(np.full((256, 384, 3), 128, np.uint8), tiny_config(num_frames=8))
    d = TrajectoryDrawing(view.display_bounds())
    d.click(40, 50)
    d.click(340, 50)
    d.still_anchor()
    d.click(200, 200)
    img = d.render(view, 8)
    assert tuple(img[50, 190]) == TRACK_COLOURS[0]  # on the horizontal path
    assert tuple(img[200, 200]) == TRACK_COLOURS[1]  # the still anchor's dot
    assert tuple(img[200, 207]) == TRACK_COLOURS[1]  # and its ring
    assert tuple(img[150, 190]) == (128, 128, 128)  # nothing elsewhere
    # The arrow head at the end of the path spreads above and below the line.
    assert (img[40:60, 330:341] == TRACK_COLOURS[0]).all(axis=-1).sum() > 20


# --- the page's messages for bad input (handlers called directly, no browser) ----------------


@pytest.fixture()
def fake_run(tmp_path):
    """A run folder with a config and chosen stages marked done (no weights: never loaded here)."""
    run = tmp_path / "run"
    save_json(run / "config.json", tiny_config(num_frames=8).to_dict())

    def with_stages(*stages):
        for s in stages:
            save_json(run / s / "done.json", {})
        return run

    return with_stages


def _studio(run, tmp_path):
    from ic_studio.app import Studio

    return Studio(run, out=tmp_path / "studio_out")


def _generate_messages(studio, session, mode="object"):
    return [out[0] for out in studio.generate(session, mode, 1.0, 8.5, 2, 0, "")]


def test_page_messages_for_missing_image_trajectory_and_adapter(fake_run, tmp_path):
    from ic_studio.app import Session

    studio = _studio(fake_run("vae", "base", "dense", "sparse", "camera"), tmp_path)
    session = Session()
    assert "upload or pick an image" in _generate_messages(studio, session)[0]

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), _image(500, 300))
    session, canvas, info, *_ , message = studio.load_image(str(image), session)
    assert canvas.shape == (256, 384, 3) and "500×300" in info and message == ""
    (msg,) = _generate_messages(studio, session)
    assert msg.startswith("**Problem:**") and "draw at least one trajectory" in msg

    session.drawing.click(100, 100)
    (msg,) = _generate_messages(studio, session)
    assert msg.startswith("**Problem:**") and "no trained object adapter" in msg and "ic train object" in msg
    studio = _studio(fake_run("vae", "base", "dense", "sparse", "camera", "object"), tmp_path)
    for seed, steps in ((float("inf"), 2), (float("nan"), 2), (1.5, 2), (0, 1001)):  # what a raw API call can send
        (msg,) = [out[0] for out in studio.generate(session, "object", 1.0, 8.5, steps, seed, "")]
        assert msg.startswith("**Problem:**") and ("seed" in msg or "steps must be a whole number from 1 to 1000"
                                                   in msg) and "missing" not in msg, msg
    # A prompt no text encoder reads whole: refused in a line, not quoted back.
    (msg,) = [out[0] for out in studio.generate(session, "object", 1.0, 8.5, 2, 0, "a dog " * 100_000)]
    assert msg == "**Problem:** prompt is 600,000 characters long; at most 10,000 are taken", msg
    written = [p.name for p in (tmp_path / "studio_out").iterdir() if p.name != "exports"]
    assert written == []  # no generation folder for rejected requests


def test_the_negative_prompt_reaches_the_request_and_its_replay(fake_run, tmp_path):
    import shlex

    from ic_studio.app import Session

    studio = _studio(fake_run("vae", "base", "dense", "sparse"), tmp_path)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), _image(500, 300))
    session = studio.load_image(str(image), Session())[0]
    session.drawing.click(100, 100)
    session.drawing.click(150, 120)
    request, folder = studio._request(session, "none", 1.0, 8.5, 2, 0, "a ball", "worst quality, low quality")
    assert request["negative_prompt"] == "worst quality, low quality"
    replay = shlex.split(studio._replay_command(request, folder))
    assert replay[replay.index("--negative-prompt") + 1] == "worst quality, low quality"
    request, folder = studio._request(session, "none", 1.0, 8.5, 2, 0, "a ball")  # the field left empty
    assert request["negative_prompt"] == "" and "--negative-prompt" not in studio._replay_command(request, folder)
    (msg,) = [out[0] for out in studio.generate(session, "none", 1.0, 8.5, 2, 0, "a ball", "low " * 3000)]
    assert msg == "**Problem:** negative_prompt is 12,000 characters long; at most 10,000 are taken", msg


def test_page_messages_are_cut_short_and_a_missing_example_is_one(fake_run, tmp_path):
    from types import SimpleNamespace

    from ic_studio.app import MESSAGE_CHARS, Session, _warning, example_images

    message = _warning("x" * 3_000_000)
    assert len(message) < MESSAGE_CHARS + 100 and message.endswith("(3,000,000 characters in all; the rest is left out)")
    assert _warning("short") == "**Problem:** short"
    studio = _studio(fake_run(), tmp_path)
    count = len(example_images())
    for index in (count, -1, "a", None, True, 1.5, [0, 1]):  # what a raw API call can send
        out = studio.load_example(Session(), SimpleNamespace(index=index))
        assert len(out) == 7 and out[6].startswith("**Problem:** there is no example"), (index, out[6])
    session, canvas, info, *_ , message = studio.load_example(Session(), SimpleNamespace(index=count - 1))
    assert message == "" and canvas.shape == (256, 384, 3) and example_images()[-1].name in info


def test_which_stages_each_mode_needs(fake_run):
    from ic_studio.generation import StudioError, check_run_for_mode, missing_stages

    cfg = tiny_config(num_frames=8)
    run = fake_run()
    assert missing_stages(run, cfg, "object") == ["vae", "base", "sparse", "object"]
    assert missing_stages(run, cfg, "base") == ["vae", "base"]  # the baseline has no motion ControlNet
    with pytest.raises(StudioError, match="no trained stages vae, base, sparse, object"):
        check_run_for_mode(run, cfg, "object")
    run = fake_run("vae", "base", "dense", "camera")
    assert missing_stages(run, cfg, "camera") == [] and missing_stages(run, cfg, "none") == []
    assert missing_stages(run, cfg, "base") == []
    assert missing_stages(run, cfg, "object") == ["object"]


def test_page_message_for_unreadable_and_too_small_images(fake_run, tmp_path):
    from ic_studio.app import Session

    studio = _studio(fake_run(), tmp_path)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    *_, message = studio.load_image(str(bad), Session())
    assert message.startswith("**Problem:**") and "notes.png is not an image in a format read here" in message
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), _image(12, 8))
    *_, message = studio.load_image(str(tiny), Session())
    assert message.startswith("**Problem:**") and "upscaling" in message


def test_page_message_for_a_bad_trajectory_file(fake_run, tmp_path):
    from ic_studio.app import Session

    studio = _studio(fake_run(), tmp_path)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), _image(500, 300))
    session = studio.load_image(str(image), Session())[0]
    for text, expected in (("[[[10, 10], [999, 10]]]", "outside"), ("{not json", "not a trajectory JSON file")):
        f = tmp_path / "t.json"
        f.write_text(text)
        *_, message = studio.import_json(str(f), session)
        assert message.startswith("**Problem:**") and expected in message
    f.write_text("[[[30, 10], [400, 200]], [[250, 150]]]")
    session, canvas, summary, tracks_json, _, message = studio.import_json(str(f), session)
    assert "Imported 2" in message and "2/8 trajectories" in summary
    assert json.loads(tracks_json) == [[[30, 10], [400, 200]], [[250, 150]]]


def test_ic_studio_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from flows.cli import main as ic_main

    assert ic_main(["studio", "--run", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_edits_of_the_drawing_are_handled_one_at_a_time_in_order(fake_run, tmp_path):
    """Gradio runs each event listener in a queue of its own: a click on the canvas right after
    "Still anchor" could be handled first (and join the open track), and two edits of the same
    session state could overwrite each other. Every edit shares one queue of one; generation
    keeps its own, so drawing stays responsive while a video is made."""
    page = _studio(fake_run("vae", "base", "dense", "sparse", "camera", "object"), tmp_path).build()
    by_id = {block._id: getattr(block, "elem_id", None) for block in page.blocks.values()}
    queues = {}
    for fn in page.fns.values():
        for target_id, event in fn.targets:
            queues[(by_id.get(target_id), event)] = (fn.concurrency_id, fn.concurrency_limit)
    edits = [("studio-canvas", "select"), ("studio-still", "click"), ("studio-upload", "upload")]
    assert all(key in queues for key in edits), sorted(map(str, queues))
    assert {queues[key] for key in edits} == {("drawing", 1)}
    assert queues[("studio-generate", "click")][0] != "drawing"
