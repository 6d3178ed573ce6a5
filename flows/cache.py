"""The `cache-latents` flow: encode a curated shard set once with a run's frozen VAE."""
from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.states import Failed

from tasks.training import cache_latents_task


@flow(name="cache-latents", log_prints=True)
def cache_latents(
    shards: str, run: str, out: str | None = None, device: str = "cpu",
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32",
) -> dict:
    """Cache SHARDS' VAE latents for RUN (default folder RUN/latents/<VAE>-<W>x<H>); a stage then
    reads them with the TrainConfig option ``latent_cache`` instead of decoding and encoding."""
    state = cache_latents_task(shards, run, out, device, dtype, return_state=True)
    if not state.is_completed():  # e.g. a damaged shard, named in the message
        return Failed(message=state.message)
    return state.result()
