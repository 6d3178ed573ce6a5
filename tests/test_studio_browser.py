"""The trajectory studio in a real browser: `python -m ic_studio` on a free port, headless Chromium
(Debian's, driven by Playwright) uploads an image, clicks a trajectory, generates with the tiny
run at two steps, and finds the result video; the flow run is checked on the Prefect API and the
drawing is replayed with `ic generate`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ic_model.config import load_json
from tests.test_server import ARTIFACTS, ROOT, _free_port, _http_ok, _stop, _wait

pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")]

TIMEOUT_MS = 180_000  # a page action on a loaded 2-core machine
GENERATE_TIMEOUT_MS = 600_000


@pytest.fixture(scope="module")
def studio(tiny_run, prefect_api, tmp_path_factory):
    """`python -m ic_studio` in its own process group, on the test's Prefect server."""
    run, _ = tiny_run
    home = tmp_path_factory.mktemp("studio")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(home / "gradio"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    log = home / "studio.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ic_studio", "--run", str(run), "--port", str(port), "--out", str(home / "out")],
        env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/"), 300, "studio", proc, log)
        yield {"url": f"http://127.0.0.1:{port}/", "out": home / "out", "run": run, "log": log}
    finally:
        _stop(proc)


def _click_display(page, x: int, y: int) -> None:
    """Click display pixel (x, y) of the canvas, the way Gradio maps a click back to pixels."""
    img = page.locator("#studio-canvas img")
    box = img.bounding_box()
    nw, nh = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    r = min(box["width"] / nw, box["height"] / nh, 1.0)
    assert r == 1.0, f"the canvas is shown scaled ({r}): not every pixel can be clicked"
    ox, oy = (box["width"] - nw) / 2, (box["height"] - nh) / 2
    # Whole CSS pixels: the event's clientX/Y may be rounded, and the box need not start on one.
    page.mouse.click(round(box["x"] + ox + x), round(box["y"] + oy + y))


def _upload(page, button: str, path) -> None:
    with page.expect_file_chooser(timeout=TIMEOUT_MS) as chooser:
        page.locator(button).click()
    chooser.value.set_files(str(path))


def _message(page, text: str) -> None:
    page.locator("#studio-message").get_by_text(text).wait_for(timeout=TIMEOUT_MS)


def test_studio_draw_generate_and_replay(studio, prefect_api, tmp_path):
    from playwright.sync_api import sync_playwright

    from flows.cli import main as ic_main
    from ic_data.mp4 import decode_mp4
    from ic_model.config import ModelConfig
    from ic_studio.drawing import TrajectoryDrawing
    from ic_studio.make_examples import toy_world
    from ic_studio.model_view import ModelView

    # A toy-world frame of another size and aspect ratio than the 384×256 the model views.
    image = toy_world(500, 300, seed=5)
    image_path = tmp_path / "toy.png"
    cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not an image")
    clicks = [(80, 170), (190, 120), (300, 90)]
    anchor = (330, 220)

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith((studio["url"], "data:", "blob:")) else None)
            page.goto(studio["url"], timeout=TIMEOUT_MS)
            page.get_by_text("Trajectory studio").first.wait_for(timeout=TIMEOUT_MS)

            # Bad input: a message on the page, never a stack trace.
            page.locator("#studio-generate").click()
            _message(page, "upload or pick an image first")
            _upload(page, "#studio-upload", not_an_image)
            _message(page, "is not an image in a format read here")

            # An example, then the upload that is drawn on.
            page.locator("#studio-examples button.thumbnail-item").first.click()
            page.locator("#studio-image-info").get_by_text("bigbuckbunny").wait_for(timeout=TIMEOUT_MS)
            _upload(page, "#studio-upload", image_path)
            page.locator("#studio-image-info").get_by_text("500×300 image").wait_for(timeout=TIMEOUT_MS)
            page.locator("#studio-generate").click()
            _message(page, "draw at least one trajectory")

            for k, (x, y) in enumerate(clicks, 1):
                _click_display(page, x, y)
                page.locator("#studio-drawing").get_by_text(f"1: {k} point").wait_for(timeout=TIMEOUT_MS)
            page.locator("#studio-still").click()
            # The button's event comes back before the click on the picture is made: a fresh
            # clone's CI run once timed out below, the click sent while that event was in flight.
            page.locator("#studio-drawing").get_by_text("Next click: a still anchor").wait_for(timeout=TIMEOUT_MS)
            _click_display(page, *anchor)
            page.locator("#studio-drawing").get_by_text("2/8 trajectories").wait_for(timeout=TIMEOUT_MS)
            shown = json.loads(page.locator("#studio-json textarea").input_value())

            # Export, clear, import: the same drawing comes back.
            with page.expect_download(timeout=TIMEOUT_MS) as download:
                page.locator("#studio-export").click()
            exported = tmp_path / "exported.json"
            download.value.save_as(exported)
            assert json.loads(exported.read_text()) == shown
            page.locator("#studio-clear").click()
            page.locator("#studio-drawing").get_by_text("Click on the image").wait_for(timeout=TIMEOUT_MS)
            _upload(page, "#studio-import", exported)
            _message(page, "Imported 2 trajectories")
            assert json.loads(page.locator("#studio-json textarea").input_value()) == shown

            steps = page.locator("#studio-steps input[type=number]")
            steps.fill("2")
            steps.press("Enter")
            page.locator("#studio-generate").click()
            page.wait_for_function(
                """() => document.querySelector('#studio-result video[src]') ||
                         (document.querySelector('#studio-message')?.innerText || '').includes('Problem:')""",
                timeout=GENERATE_TIMEOUT_MS,
            )
            message = page.locator("#studio-message").inner_text()
            assert "Problem:" not in message, message + "\n" + studio["log"].read_text()[-3000:]
            assert page.locator("#studio-result video").get_attribute("src").endswith("overlay.mp4")
            metrics = page.locator("#studio-metrics").inner_text()
            assert "ObjMC =" in metrics and "lk tracker" in metrics
            page.locator("#studio-result-input img").wait_for(timeout=TIMEOUT_MS)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "studio.png"), full_page=True)
        finally:
            browser.close()
    assert outside == [], f"the page reached outside the studio: {outside}"

    # What was drawn, mapped by the studio's own geometry, is what the page exported.
    cfg = ModelConfig.from_dict(load_json(Path(studio["run"]) / "config.json"))
    view = ModelView.from_image(image, cfg)
    expected = TrajectoryDrawing(view.display_bounds())
    for x, y in clicks:
        expected.click(x, y)
    expected.still_anchor()
    expected.click(*anchor)
    np.testing.assert_allclose(np.concatenate(shown), np.concatenate(expected.to_source(view)), atol=1e-6)

    # The request ran as the `generate` flow, with the drawing among its parameters.
    (folder,) = [d for d in studio["out"].iterdir() if (d / "video.mp4").exists()]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        by_name = FlowRunFilter(name=FlowRunFilterName(any_=[f"studio-{folder.name}"]))
        runs = client.read_flow_runs(flow_run_filter=by_name)
        assert len(runs) == 1 and runs[0].state.is_completed()
        assert client.read_flow(runs[0].flow_id).name == "generate"
        (request,) = runs[0].parameters["requests"]
    assert request["trajectories"] == shown and request["steps"] == 2 and request["mode"] == "object"
    assert json.loads((folder / "trajectories.json").read_text()) == shown

    # Replayed from the command line, the drawing gives the same video.
    replay = tmp_path / "replay.mp4"
    assert ic_main(["generate", "--run", str(studio["run"]), "--image", str(image_path), "--trajectories",
                    str(folder / "trajectories.json"), "--steps", "2", "--out", str(replay)]) == 0
    studio_frames = decode_mp4((folder / "video.mp4").read_bytes()).astype(int)
    replay_frames = decode_mp4(replay.read_bytes()).astype(int)
    assert studio_frames.shape == replay_frames.shape == (cfg.num_frames, cfg.height, cfg.width, 3)
    assert np.abs(studio_frames - replay_frames).mean() < 0.5  # thread counts may differ by a rounding
