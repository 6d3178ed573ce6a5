"""Serve every deployment from one process (no work pool needed).

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py

Deployments: curate/webvid, curate/realestate10k. Set IC_DASK_ADDRESS=tcp://host:8786 to run
their chunk tasks on a Dask cluster instead of local threads.
"""
from __future__ import annotations

from prefect import serve

from flows.curate import curate


def deployments():
    # Runs start in subprocesses that import flows/curate.py, which reads IC_DASK_ADDRESS.
    return [
        curate.to_deployment(
            name="webvid", parameters={"source": "webvid"}, tags=["curation"],
            description="Curate WebVid-like mixed-motion videos into shards (paper §2.2).",
        ),
        curate.to_deployment(
            name="realestate10k", parameters={"source": "realestate10k"}, tags=["curation"],
            description="Curate camera-only (RealEstate10K-like) videos; every clip is camera_only.",
        ),
    ]


if __name__ == "__main__":
    serve(*deployments())
