"""The `generate` flow: a batch of image-to-video requests from the UI or the CLI (paper §2.5)."""
from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.states import Failed

from tasks.inference import generate_videos


@flow(name="generate", log_prints=True)
def generate(
    run: str,
    requests: list[dict],
    device: str = "cpu",
    base_model: str | None = None,
    base_loras: list[str] | None = None,
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32",
) -> list[dict]:
    """Each request: {image, prompt, trajectories (JSON file or list), out (.mp4), mode
    (camera|object|none|base), trajs_scale, guidance_scale, steps, seed}. ``dtype``: what the
    networks run in (bf16/fp16 on a GPU)."""
    state = generate_videos(run, requests, device, base_model, base_loras, dtype, return_state=True)
    if not state.is_completed():  # a request failed: the task's table says which, its message how
        return Failed(message=state.message)
    return state.result()
