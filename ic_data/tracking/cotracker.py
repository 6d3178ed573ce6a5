"""The paper's tracking backend: CoTracker (:class:`CoTrackerTracker`) from a local clone and
local weights, and the look-up of those files."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ic_data.errors import MissingWeightsError
from ic_data.tracking.base import _check_inputs

__all__ = ["REPO_ENV", "CHECKPOINT_ENV", "CoTrackerTracker", "find_cotracker"]

REPO_ENV = "IC_COTRACKER_REPO"
CHECKPOINT_ENV = "IC_COTRACKER_CHECKPOINT"


# hubconf entry point → the checkpoint file its URL names (torch.hub caches it under that name).
# Only the offline predictors: they take the whole clip in one call.
_COTRACKER_CHECKPOINTS = {
    "cotracker3_offline": "scaled_offline.pth",
    "cotracker2v1": "cotracker2v1.pth",
    "cotracker2": "cotracker2.pth",
}
DEFAULT_COTRACKER_MODEL = "cotracker3_offline"
# CoTracker3's predictors report a point visible when visibility × confidence > 0.6; older
# releases threshold at 0.9 inside the predictor. Used only if a model returns probabilities.
COTRACKER_VISIBILITY_THRESHOLD = 0.6


class CoTrackerTracker:
    """CoTracker (Karaev et al.), the paper's tracker, loaded from local files only.

    ``repo_dir`` (or ``$IC_COTRACKER_REPO``) is a clone of facebookresearch/co-tracker, loaded
    with ``torch.hub.load(repo_dir, model, source="local", pretrained=False)``; the weights come
    from ``checkpoint`` (or ``$IC_COTRACKER_CHECKPOINT``, or the file torch.hub would have
    downloaded, in ``$TORCH_HOME/hub/checkpoints``). Nothing is downloaded; anything missing
    raises :class:`~ic_data.errors.MissingWeightsError` naming the setting to fill.

    The model receives the clip as float ``(1, T, 3, H, W)`` in [0, 255] and queries
    ``(1, N, 3)`` rows ``[0, x, y]`` (all points start in frame 0); CoTracker's predictor
    rescales to its own resolution and back with the pixel-centre convention used here.
    """

    name = "cotracker"

    def __init__(
        self,
        repo_dir: str | None = None,
        checkpoint: str | None = None,
        device: str = "cpu",
        model: str = DEFAULT_COTRACKER_MODEL,
    ):
        if model not in _COTRACKER_CHECKPOINTS:
            supported = sorted(_COTRACKER_CHECKPOINTS)
            raise ValueError(f"unsupported CoTracker model {model!r}; offline models: {supported}")
        import torch  # deferred: the LK backend and the rest of ic_data do not need torch

        repo, weights = find_cotracker(repo_dir, checkpoint, model)
        predictor = torch.hub.load(str(repo), model, source="local", pretrained=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # CoTracker 2 checkpoints nest the state dict
        predictor.model.load_state_dict(state)
        self._predictor = predictor.to(device).eval()
        self._torch = torch
        self.device = device
        self.model = model
        self.checkpoint = str(weights)
        self.version = f"{model}:{weights.name}:{_sha256_prefix(weights)}"

    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames, points = _check_inputs(frames, points)
        num_frames, n = frames.shape[0], len(points)
        if n == 0:
            return np.zeros((num_frames, 0, 2), np.float32), np.zeros((num_frames, 0), bool)
        torch = self._torch
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float().to(self.device)
        queries = torch.zeros((1, n, 3), dtype=torch.float32)
        queries[0, :, 1:] = torch.from_numpy(points)
        with torch.no_grad():
            tracks, visibility = self._predictor(video, queries=queries.to(self.device))
        tracks = tracks.detach().cpu().numpy()
        visibility = visibility.detach().cpu().numpy()
        if tracks.shape != (1, num_frames, n, 2) or visibility.shape[:3] != (1, num_frames, n):
            raise RuntimeError(
                f"CoTracker returned tracks {tracks.shape} and visibility {visibility.shape}, "
                f"expected (1, {num_frames}, {n}, 2) and (1, {num_frames}, {n})"
            )
        tracks = tracks[0].astype(np.float32)
        visibility = visibility.reshape(1, num_frames, n)[0]
        if visibility.dtype != bool:
            visibility = visibility > COTRACKER_VISIBILITY_THRESHOLD
        tracks[0] = points
        visibility[0] = True
        return tracks, visibility


def find_cotracker(repo_dir: str | None = None, checkpoint: str | None = None,
                   model: str = DEFAULT_COTRACKER_MODEL) -> tuple[Path, Path]:
    """(the local co-tracker clone, the checkpoint) ``CoTrackerTracker`` loads, from the arguments,
    ``$IC_COTRACKER_REPO``/``$IC_COTRACKER_CHECKPOINT`` or the torch.hub cache; else one
    MissingWeightsError saying what to set (nothing is loaded)."""
    return Path(_cotracker_repo(repo_dir)), _cotracker_checkpoint(checkpoint, model)


def _cotracker_repo(repo_dir: str | None) -> str:
    repo = repo_dir or os.environ.get(REPO_ENV)
    if not repo:
        raise MissingWeightsError(
            f"CoTracker needs a local clone of facebookresearch/co-tracker: set {REPO_ENV} "
            f"(or pass repo_dir), and its weights via {CHECKPOINT_ENV} or the torch.hub cache; "
            "or use the offline 'lk' tracker (--tracker lk)"
        )
    if not (Path(repo).expanduser() / "hubconf.py").is_file():
        raise MissingWeightsError(
            f"{repo} has no hubconf.py: {REPO_ENV} must point at a clone of facebookresearch/co-tracker"
        )
    return str(Path(repo).expanduser())


def _cotracker_checkpoint(checkpoint: str | None, model: str) -> Path:
    given = checkpoint or os.environ.get(CHECKPOINT_ENV)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"CoTracker checkpoint {path} does not exist (from checkpoint= or {CHECKPOINT_ENV})"
            )
        return path
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / _COTRACKER_CHECKPOINTS[model]
    if cached.is_file():
        return cached
    raise MissingWeightsError(
        f"no CoTracker weights for {model}: set {CHECKPOINT_ENV} (or pass checkpoint) to "
        f"{_COTRACKER_CHECKPOINTS[model]}, or place it at {cached} (the torch.hub cache, $TORCH_HOME)"
    )


def _sha256_prefix(path: Path, length: int = 12) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
