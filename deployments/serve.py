"""Serve every deployment from one process (no work pool needed).

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py

Deployments: curate/webvid, curate/realestate10k, train-stage/{vae,base,dense,sparse,camera,
object}, cache-latents/shards, evaluate/{camera,object,set} (set: a set file of your own), generate/batch,
and demo/demo (the whole chain at toy scale; `-p scale=proof` for the proof run). Set IC_DASK_ADDRESS=tcp://host:8786 to run curation chunk tasks on a Dask cluster.
Training tasks carry the `gpu` tag; IC_GPU_SLOTS (default 1) sets its concurrency limit so two
stages never share a GPU.
"""
from __future__ import annotations

import os

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from flows.cache import cache_latents
from flows.curate import curate
from flows.demo import demo
from flows.evaluate import evaluate
from flows.generate import generate
from flows.train import train_stage_flow
from tasks.training import GPU_TAG

TRAIN_STAGES = {
    "vae": "Tiny preset: train the small VAE on curated frames.",
    "base": "Tiny preset: train UNet + motion module + image ControlNet as an image-to-video model.",
    "dense": "Motion ControlNet on dense (256-track) trajectories, base frozen (paper §2.4).",
    "sparse": "Motion ControlNet fine-tuned on 1–8 sampled tracks.",
    "camera": "Camera LoRA on camera-only shards; the ControlNet frozen.",
    "object": "Object LoRA on mixed shards, camera LoRA frozen (stop-gradient) + orthogonal loss.",
}


def deployments():
    # Runs start in subprocesses that import flows/curate.py, which reads IC_DASK_ADDRESS.
    found = [
        curate.to_deployment(
            name="webvid", parameters={"source": "webvid"}, tags=["curation"],
            description="Curate WebVid-like mixed-motion videos into shards (paper §2.2).",
        ),
        curate.to_deployment(
            name="realestate10k", parameters={"source": "realestate10k"}, tags=["curation"],
            description="Curate camera-only (RealEstate10K-like) videos; every clip is camera_only.",
        ),
    ]
    for stage, description in TRAIN_STAGES.items():
        found.append(
            train_stage_flow.to_deployment(
                name=stage, parameters={"stage": stage}, tags=["training"], description=description
            )
        )
    for set_name in ("camera", "object"):
        found.append(
            evaluate.to_deployment(
                name=set_name, parameters={"set_name": set_name}, tags=["evaluation"],
                description=f"FID, FVD and {'CamMC' if set_name == 'camera' else 'ObjMC'} on the paper's {set_name} set.",
            )
        )
    found.append(evaluate.to_deployment(name="set", tags=["evaluation"],
                                        description="FID, FVD and CamMC/ObjMC on a set file of your own (-p set_name=FILE)."))
    found.append(cache_latents.to_deployment(name="shards", tags=["training"],
                                             description="Encode curated shards once with a run's VAE (latent_cache)."))
    found.append(generate.to_deployment(name="batch", tags=["inference"],
                                        description="A batch of image + prompt + trajectories requests."))
    found.append(demo.to_deployment(name="demo", tags=["demo"],
                                    description="Toy world → curation → all six stages → evaluation → report."))
    return found


def ensure_gpu_limit(slots: int | None = None) -> None:
    """Create the `gpu` tag concurrency limit unless one exists (an operator's value wins)."""
    slots = slots or int(os.environ.get("IC_GPU_SLOTS", "1"))
    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(GPU_TAG)
        except ObjectNotFound:
            client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)


if __name__ == "__main__":
    ensure_gpu_limit()
    serve(*deployments())
