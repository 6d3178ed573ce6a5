"""Image Conductor's data side: video curation into training shards, without Prefect.

    from ic_data import CurationConfig, curate
    summary = curate("videos/", "out/", CurationConfig(processes=4))

``curate`` runs the whole chain in this process (the Prefect flows in ``flows/`` run the same
library functions per chunk); ``discover_videos`` and ``plan_chunks`` are its first steps.
``make_tracker``/``grid_points`` annotate a clip with point tracks, ``sample_sparse_tracks`` and
``tracks_to_flow_maps`` turn tracks into the model's conditioning, ``load_trajectory_file`` and
``validate_trajectories`` read user-drawn ones. ``read_manifest`` and ``read_shard`` read a run's
output; ``write_mp4`` writes frames as H.264; ``write_synthetic_shards`` and ``random_video`` make
synthetic data for tests and demos. The names import on first use, so ``import ic_data.errors`` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CurationConfig": "ic_data.pipeline",
    "curate": "ic_data.pipeline",
    "discover_videos": "ic_data.pipeline",
    "plan_chunks": "ic_data.pipeline",
    "make_tracker": "ic_data.tracking",
    "grid_points": "ic_data.tracking",
    "sample_sparse_tracks": "ic_data.trajectories",
    "tracks_to_flow_maps": "ic_data.trajectories",
    "load_trajectory_file": "ic_data.trajectories",
    "validate_trajectories": "ic_data.trajectories",
    "read_manifest": "ic_data.manifest",
    "read_shard": "ic_data.shards",
    "write_mp4": "ic_data.mp4",
    "write_synthetic_shards": "ic_data.synthetic",
    "random_video": "ic_data.synthetic",
    "MissingWeightsError": "ic_data.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ic_data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
