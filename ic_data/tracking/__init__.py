"""Point tracking on a cropped clip: a 16×16 grid of frame-0 points followed through 32 frames.

Two backends share one interface (:class:`Tracker`):

* :class:`CoTrackerTracker` — the paper's tracker (§2.2), CoTracker loaded with
  ``torch.hub.load(dir, source="local")`` from a local clone of facebookresearch/co-tracker and
  a local checkpoint. Nothing is downloaded; missing configuration raises
  :class:`~ic_data.errors.MissingWeightsError` naming the settings to fill.
* :class:`LKTracker` — the offline backend: OpenCV pyramidal Lucas–Kanade, frame to frame,
  with a forward–backward check, refinement against each point's frame-0 appearance (warped by
  the local motion) against drift, an appearance check for occlusion, and neighbour-driven
  motion for points while they are invisible.

The tracker's ``name`` and ``version`` go into every clip's metadata, so a dataset records
which backend annotated it.

Both take the clip already in memory — uint8 RGB ``(T, H, W, 3)`` — and query points
``(N, 2)`` in frame 0, and return ``tracks`` float32 ``(T, N, 2)`` and ``visibility`` bool
``(T, N)``; ``tracks[0]`` is the query points exactly and ``visibility[0]`` is all True.

Coordinates are ``(x, y)`` pixels with the centre of the top-left pixel at ``(0, 0)``; a point
is inside the clip when ``0 ≤ x ≤ W − 1`` and ``0 ≤ y ≤ H − 1``.
"""
from __future__ import annotations

from ic_data.tracking.base import GRID_SIZE, Tracker, grid_points
from ic_data.tracking.cotracker import CHECKPOINT_ENV, REPO_ENV, CoTrackerTracker
from ic_data.tracking.lk import LKTracker

__all__ = [
    "GRID_SIZE",
    "REPO_ENV",
    "CHECKPOINT_ENV",
    "grid_points",
    "Tracker",
    "LKTracker",
    "CoTrackerTracker",
    "make_tracker",
]

# --- factory -----------------------------------------------------------------------------------

_TRACKERS = {"lk": LKTracker, "cotracker": CoTrackerTracker}
TRACKERS = tuple(_TRACKERS)  # the names make_tracker takes


def make_tracker(name: str, **kwargs) -> Tracker:
    """Build a tracker by name: ``"lk"`` (offline) or ``"cotracker"`` (needs local weights)."""
    try:
        cls = _TRACKERS[name]
    except KeyError:
        raise ValueError(f"unknown tracker {name!r}; choose from {sorted(_TRACKERS)}") from None
    return cls(**kwargs)
