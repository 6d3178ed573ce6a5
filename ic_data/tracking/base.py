"""What every tracking backend shares: the query grid, the :class:`Tracker` interface, and
the checks and helpers on their inputs (see :mod:`ic_data.tracking` for the conventions)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ic_data.settings import refuse, whole

__all__ = ["GRID_SIZE", "grid_points", "Tracker"]

GRID_SIZE = 16


def grid_points(width: int = 384, height: int = 256, grid_size: int = GRID_SIZE) -> np.ndarray:
    """Query points at the centres of a ``grid_size × grid_size`` tiling of the frame.

    Cell ``(i, j)`` covers ``[-0.5 + j·W/g, -0.5 + (j+1)·W/g]`` horizontally (pixel edges, in the
    pixel-centre convention), so its centre is ``x = (j + 0.5)·W/g − 0.5``; likewise for y. For a
    384×256 clip and g = 16 that is x = 11.5, 35.5, …, 371.5 and y = 7.5, 23.5, …, 247.5: the
    grid is symmetric about the image centre and every point is half a cell from the border.
    Returns float32 ``(g², 2)`` in row-major order (x varies fastest).
    """
    # grid_size=2.5 gave 9 points, a NaN width NaN points.
    refuse("grid_points", [whole("width", width, 1), whole("height", height, 1), whole("grid_size", grid_size, 1)])
    xs = (np.arange(grid_size) + 0.5) * width / grid_size - 0.5
    ys = (np.arange(grid_size) + 0.5) * height / grid_size - 0.5
    gx, gy = np.meshgrid(xs, ys)  # (g, g), rows follow y
    return np.stack([gx.ravel(), gy.ravel()], axis=-1).astype(np.float32)


@runtime_checkable
class Tracker(Protocol):
    """Follows frame-0 query points through a clip."""

    name: str
    version: str

    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``frames`` uint8 (T, H, W, 3) RGB, ``points`` (N, 2) x, y in frame 0 →
        ``tracks`` float32 (T, N, 2), ``visibility`` bool (T, N)."""
        ...


def _check_inputs(frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2) x, y, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points contain NaN/inf")
    return frames, points


def _inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
