"""Trajectories: sparse track sampling, Gaussian-filtered flow maps, user trajectory files.

One function, :func:`tracks_to_flow_maps`, turns point tracks (and the chosen subset) into the
conditioning tensor of the motion ControlNet. Training and inference both call it, so the two
cannot drift apart. It reproduces the official Image Conductor release:

* frame 0 is all zeros (the official code prepends a zero frame);
* for each step ``i`` the displacement ``p_{i+1} - p_i`` of every selected track is written at
  the integer pixel of ``p_i`` in frame ``i + 1``;
* frames ``1..T-1`` are filtered with a normalised 99×99 Gaussian kernel, σ = 10
  (``cv2.filter2D``, default border ``BORDER_REFLECT_101``).

Curated tracks come with a tracker's visibility; training leaves out the steps of hidden points
and of points outside the frame (the release's drawn tracks never have either).

Sparse tracks are drawn as in paper §2.2: ``n ∈ [1, 8]`` tracks with probability proportional to
their normalised motion intensity (total path length), so moving content is what the model is
asked to follow.

User trajectories (JSON: a list of tracks, each a list of ``[x, y]`` clicks in 384×256 clip
pixels) are validated with one clear :class:`~ic_data.errors.TrajectoryError` per problem and
resampled to the clip length with PCHIP, the official demo's convention.

Coordinates are ``(x, y)`` pixels throughout; arrays are ``(T, N, 2)`` = (frames, tracks, xy).
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import cv2
import numpy as np
from scipy.interpolate import PchipInterpolator

from ic_data.clips import visible_box
from ic_data.errors import TrajectoryError
from ic_data.settings import number, refuse, whole

__all__ = [
    "track_motion_intensity",
    "sample_sparse_tracks",
    "gaussian_kernel",
    "tracks_to_flow_maps",
    "dense_flow_maps",
    "resample_trajectory",
    "validate_trajectories",
    "load_trajectory_file",
    "user_tracks_to_array",
]

# Clip geometry and kernel of the official release.
CLIP_HEIGHT = 256
CLIP_WIDTH = 384
KERNEL_SIZE = 99
KERNEL_SIGMA = 10.0
#: The most points a user's track may have: it is resampled to the video's 16 (or 32) frames,
#: and 8 tracks of this many points stay a small file and a small request.
MAX_TRACK_POINTS = 1000


def _check_tracks(tracks: np.ndarray) -> np.ndarray:
    """Return ``tracks`` as a float64 (T, N, 2) array of finite values, or raise TrajectoryError."""
    try:
        arr = np.asarray(tracks)
    except ValueError as err:  # ragged nested lists
        raise TrajectoryError(f"tracks must be a (T, N, 2) array of numbers ({err})") from None
    if arr.ndim != 3 or arr.shape[2] != 2:
        raise TrajectoryError(f"tracks must have shape (T, N, 2), got {arr.shape}")
    if arr.shape[0] < 1:
        raise TrajectoryError("tracks have no frames (T = 0)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TrajectoryError(f"tracks must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad_t, bad_n = np.argwhere(~np.isfinite(arr).all(axis=2))[0]
        raise TrajectoryError(f"tracks contain NaN/inf (first at frame {bad_t}, track {bad_n})")
    return arr


def _check_visibility(visibility: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if visibility is None:
        return None
    vis = np.asarray(visibility)
    if vis.shape != shape:
        raise TrajectoryError(f"visibility must have shape {shape} (T, N), got {vis.shape}")
    return vis.astype(bool, copy=False)


def track_motion_intensity(
    tracks: np.ndarray, visibility: np.ndarray | None = None
) -> np.ndarray:
    """Normalised motion intensity of each track (paper §2.2).

    Args:
        tracks: (T, N, 2) pixel coordinates.
        visibility: optional (T, N) bool. A step counts only when the point is visible at both
            of its ends: positions a tracker reports for occluded points are guesses, and their
            jumps would otherwise look like motion.

    Returns:
        float64 (N,): total path length ``sum_t ||p_{t+1} - p_t||`` of each track, divided by
        the sum over tracks, so the values sum to 1. Uniform when no track moves.
    """
    arr = _check_tracks(tracks)
    num_frames, num_tracks = arr.shape[:2]
    vis = _check_visibility(visibility, (num_frames, num_tracks))
    if num_tracks == 0:
        return np.zeros(0, dtype=np.float64)
    step_lengths = np.linalg.norm(np.diff(arr, axis=0), axis=2)  # (T-1, N)
    if vis is not None:
        step_lengths = step_lengths * (vis[1:] & vis[:-1])
    path_lengths = step_lengths.sum(axis=0)
    total = path_lengths.sum()
    if total <= 0.0:
        return np.full(num_tracks, 1.0 / num_tracks)
    return path_lengths / total


def sample_sparse_tracks(
    tracks: np.ndarray,
    rng: np.random.Generator,
    max_tracks: int = 8,
    min_tracks: int = 1,
    visibility: np.ndarray | None = None,
) -> np.ndarray:
    """Intensity-weighted sparse sample of track indices (paper §2.2).

    ``n`` is drawn uniformly from ``[min_tracks, min(max_tracks, N)]`` (``min_tracks`` is lowered
    to that upper bound when there are fewer tracks), then ``n`` distinct tracks are drawn
    without replacement with probability proportional to :func:`track_motion_intensity`. When
    fewer than ``n`` tracks move at all, the remaining picks are drawn uniformly from the static
    tracks, so the call never fails for lack of motion.

    Returns:
        int64 (n,) sorted track indices. Deterministic for a given ``rng`` state.
    """
    refuse("sample_sparse_tracks", [
        None if isinstance(rng, np.random.Generator) else f"rng must be a numpy Generator "
        f"(np.random.default_rng(seed)), got {type(rng).__name__}",
        whole("min_tracks", min_tracks, 1), whole("max_tracks", max_tracks, 1)])
    if max_tracks < min_tracks:
        raise ValueError(f"need 1 <= min_tracks <= max_tracks, got {min_tracks}, {max_tracks}")
    probs = track_motion_intensity(tracks, visibility)
    num_tracks = probs.shape[0]
    if num_tracks == 0:
        raise TrajectoryError("cannot sample sparse tracks: there are no tracks (N = 0)")
    high = min(max_tracks, num_tracks)
    low = min(min_tracks, high)
    n = int(rng.integers(low, high + 1))

    num_weighted = min(n, int(np.count_nonzero(probs)))
    chosen = rng.choice(num_tracks, size=num_weighted, replace=False, p=probs)
    if num_weighted < n:
        rest = np.setdiff1d(np.arange(num_tracks), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, size=n - num_weighted, replace=False)])
    return np.sort(chosen).astype(np.int64)


def gaussian_kernel(size: int = KERNEL_SIZE, sigma: float = KERNEL_SIGMA) -> np.ndarray:
    """Isotropic 2-D Gaussian kernel normalised to sum 1, as the official ``bivariate_Gaussian``.

    ``size`` must be odd so the kernel has a centre pixel (``cv2.filter2D`` anchors there).
    Returns float32 (size, size).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    half = size // 2
    axis = np.arange(-half, half + 1, dtype=np.float64)
    sq_dist = axis[None, :] ** 2 + axis[:, None] ** 2
    kernel = np.exp(-0.5 * sq_dist / sigma**2)
    return (kernel / kernel.sum()).astype(np.float32)


def tracks_to_flow_maps(
    tracks: np.ndarray,
    indices: np.ndarray | None = None,
    height: int = CLIP_HEIGHT,
    width: int = CLIP_WIDTH,
    kernel_size: int = KERNEL_SIZE,
    sigma: float = KERNEL_SIGMA,
    visibility: np.ndarray | None = None,
) -> np.ndarray:
    """Trajectory conditioning tensor, built exactly as the official release builds it.

    Args:
        tracks: (T, N, 2) pixel coordinates (x, y) in the ``width``×``height`` clip.
        indices: track indices to use (e.g. from :func:`sample_sparse_tracks`); ``None`` uses
            every track (the dense variant).
        height, width: size of the maps in pixels.
        kernel_size, sigma: the Gaussian filter (official: 99, 10).
        visibility: optional (T, N) bool of a tracker (before ``indices``). With it, a step
            ``p_i → p_{i+1}`` is written only where the point is visible at both ends and
            ``p_i`` lies inside the map: a tracker's positions for hidden points are guesses, and
            a point outside the image has no pixel to carry its motion (clamped, it would pile
            on the border). Training passes it; drawn tracks (inference) have none.

    Returns:
        float32 (2, T, height, width); channel 0 is dx, channel 1 is dy. Frame 0 is zero; frame
        ``i + 1`` holds, before filtering, ``p_{i+1} - p_i`` of each track at pixel
        ``(int(x_i), int(y_i))``. Positions outside the image are clamped to the border pixel
        (``x`` into ``[0, width-1]``, ``y`` into ``[0, height-1]``) before truncation; the
        displacement itself is not changed. Where tracks share a pixel, the later track in
        ``indices`` wins, as with the official sequential writes.
    """
    arr = _check_tracks(tracks)
    num_frames, num_tracks = arr.shape[:2]
    refuse("tracks_to_flow_maps", [whole("height", height, 1), whole("width", width, 1),
                                   whole("kernel_size", kernel_size, 1), number("sigma", sigma, 0, above=True)])
    vis = _check_visibility(visibility, (num_frames, num_tracks))
    if indices is not None:
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise TrajectoryError(
                f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}"
            )
        if idx.size and (idx.min() < -num_tracks or idx.max() >= num_tracks):
            raise TrajectoryError(f"indices {idx.tolist()} out of range for {num_tracks} tracks")
        arr = arr[:, idx.astype(np.int64)]
        if vis is not None:
            vis = vis[:, idx.astype(np.int64)]
    kernel = gaussian_kernel(kernel_size, sigma)

    # One (H, W, 2) image per frame lets filter2D process dx and dy in one call.
    flow = np.zeros((num_frames, height, width, 2), dtype=np.float32)
    if num_frames > 1 and arr.shape[1] > 0:
        start = arr[:-1]  # (T-1, M, 2) positions p_i
        displacement = (arr[1:] - arr[:-1]).reshape(-1, 2)
        col = np.clip(start[..., 0], 0, width - 1).astype(np.int64)  # >= 0, so cast == trunc
        row = np.clip(start[..., 1], 0, height - 1).astype(np.int64)
        frame = np.arange(1, num_frames, dtype=np.int64)[:, None]
        flat = ((frame * height + row) * width + col).reshape(-1)  # ordered (frame, track)
        if vis is not None:
            x, y = start[..., 0], start[..., 1]
            keep = (vis[:-1] & vis[1:] & (x >= 0) & (x < width) & (y >= 0) & (y < height)).reshape(-1)
            flat, displacement = flat[keep], displacement[keep]
        # Keep the last write to each pixel: numpy does not promise an order for repeated
        # indices in a fancy assignment, so resolve duplicates explicitly.
        _, first_in_reversed = np.unique(flat[::-1], return_index=True)
        last = flat.size - 1 - first_in_reversed
        flow.reshape(-1, 2)[flat[last]] = displacement[last]
        for t in np.unique(flat[last] // (height * width)):
            flow[t] = cv2.filter2D(flow[t], -1, kernel)
    return np.ascontiguousarray(flow.transpose(3, 0, 1, 2))


def dense_flow_maps(
    tracks: np.ndarray,
    height: int = CLIP_HEIGHT,
    width: int = CLIP_WIDTH,
    kernel_size: int = KERNEL_SIZE,
    sigma: float = KERNEL_SIGMA,
) -> np.ndarray:
    """:func:`tracks_to_flow_maps` over every track (the dense-trajectory training stage)."""
    return tracks_to_flow_maps(tracks, None, height, width, kernel_size, sigma)


def resample_trajectory(points, num_frames: int, still_step=(1.0, 1.0)) -> np.ndarray:
    """Resample a user trajectory of any length >= 1 to ``num_frames`` positions.

    Two or more points are PCHIP-interpolated in x(t) and y(t) over ``t = linspace(0, 1,
    len(points))`` and sampled at ``linspace(0, 1, num_frames)``, the official demo's
    convention: endpoints are kept and monotone stretches stay monotone (no overshoot).
    Repeated points simply pause the track. One point ``p`` is a stationary point as the
    official demo makes it: the track ``[p, p + still_step]`` (its +1 pixel each way in the
    384×256 frame it draws in; pass that pixel in the points' own units), so it moves by
    ``still_step / (num_frames − 1)`` a frame, nearly still.

    Returns float32 (num_frames, 2).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 1:
        raise TrajectoryError(f"a trajectory must be (L >= 1, 2) points, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise TrajectoryError("a trajectory contains NaN/inf coordinates")
    if pts.shape[0] == 1:
        pts = np.concatenate([pts, pts + np.asarray(still_step, np.float64).reshape(1, 2)])
    t = np.linspace(0.0, 1.0, pts.shape[0])
    new_t = np.linspace(0.0, 1.0, num_frames)
    resampled = PchipInterpolator(t, pts, axis=0)(new_t)
    return resampled.astype(np.float32)


def _is_real_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def require_in_view(tracks, width: int, height: int, max_upscale: float = 16.0) -> None:
    """Every point of ``tracks`` (validated ``[x, y]`` points in a ``width``×``height`` frame's
    pixels) lies in the centre crop the model sees (:func:`ic_data.clips.visible_box`); else
    one TrajectoryError naming the first point outside it. A point outside would be clamped to
    the crop's border, a motion nobody drew."""
    x0, y0, x1, y1 = visible_box(width, height, max_upscale)
    for ti, track in enumerate(tracks):
        for pi, (x, y) in enumerate(np.asarray(track, np.float64).reshape(-1, 2)):
            if not (x0 <= x <= x1 and y0 <= y <= y1):
                raise TrajectoryError(
                    f"track {ti}, point {pi} ({x:g}, {y:g}) is outside the centre crop the model sees, "
                    f"x {x0:g}–{x1:g} and y {y0:g}–{y1:g} of {width}×{height}")


def validate_trajectories(
    obj, width: int, height: int, max_tracks: int | None = 8, max_points: int | None = MAX_TRACK_POINTS
) -> list[np.ndarray]:
    """Validate parsed JSON of a user trajectory file.

    Expected: a non-empty list of tracks; each track a non-empty list of ``[x, y]`` pairs of
    finite real numbers (not bools, not strings) with ``0 <= x <= width-1`` and
    ``0 <= y <= height-1``; at most ``max_tracks`` tracks and ``max_points`` points a track,
    unless they are ``None``.

    Raises:
        TrajectoryError: on the first problem, naming the track and point index.

    Returns:
        One float64 (L_i, 2) array per track.
    """
    if not isinstance(obj, (list, tuple)):
        raise TrajectoryError(
            f"trajectories must be a list of tracks, got {type(obj).__name__}"
        )
    if len(obj) == 0:
        raise TrajectoryError("trajectories must contain at least one track, got an empty list")
    if max_tracks is not None and len(obj) > max_tracks:
        raise TrajectoryError(f"too many tracks: {len(obj)} given, at most {max_tracks} allowed")

    result = []
    for ti, track in enumerate(obj):
        if not isinstance(track, (list, tuple)):
            raise TrajectoryError(
                f"track {ti}: must be a list of [x, y] points, got {type(track).__name__}"
            )
        if len(track) == 0:
            raise TrajectoryError(f"track {ti}: has no points")
        if max_points is not None and len(track) > max_points:
            raise TrajectoryError(f"track {ti}: {len(track):,} points, at most {max_points:,} (a track is resampled "
                                  "to the video's frames: more points add nothing)")
        for pi, point in enumerate(track):
            where = f"track {ti}, point {pi}"
            if not isinstance(point, (list, tuple)) or len(point) != 2:
                raise TrajectoryError(f"{where}: must be a pair [x, y], got {point!r}")
            for name, value in zip("xy", point):
                if not _is_real_number(value):
                    raise TrajectoryError(
                        f"{where}: {name} must be a number, got {type(value).__name__} {value!r}"
                    )
                try:
                    finite = math.isfinite(value)
                except OverflowError:  # an integer past a float's range: no pixel of any image
                    raise TrajectoryError(f"{where}: {name} is a {len(str(abs(value)))}-digit number, "
                                          "far outside the image") from None
                if not finite:
                    raise TrajectoryError(f"{where}: {name} is not finite ({value!r})")
            x, y = float(point[0]), float(point[1])
            if not 0 <= x <= width - 1:
                raise TrajectoryError(f"{where}: x = {x} is outside [0, {width - 1}]")
            if not 0 <= y <= height - 1:
                raise TrajectoryError(f"{where}: y = {y} is outside [0, {height - 1}]")
        result.append(np.asarray(track, dtype=np.float64).reshape(-1, 2))
    return result


def load_trajectory_file(
    path: str | Path, width: int, height: int, max_tracks: int | None = 8, max_points: int | None = MAX_TRACK_POINTS
) -> list[np.ndarray]:
    """Read a JSON trajectory file and validate it (see :func:`validate_trajectories`).

    Every problem (unreadable file, malformed JSON, invalid content) is a TrajectoryError whose
    message starts with the file path.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TrajectoryError(f"{path}: cannot read trajectory file ({err})") from err
    try:
        obj = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer past Python's 4300-digit limit
        raise TrajectoryError(f"{path}: malformed JSON ({err})") from err
    except RecursionError:  # [[[[… nested deeper than the parser goes
        raise TrajectoryError(f"{path}: malformed JSON (nested too deeply: trajectories are tracks of "
                              "[x, y] points)") from None
    try:
        return validate_trajectories(obj, width, height, max_tracks, max_points)
    except TrajectoryError as err:
        raise TrajectoryError(f"{path}: {err}") from err


def user_tracks_to_array(tracks: list[np.ndarray], num_frames: int, still_step=(1.0, 1.0)) -> np.ndarray:
    """Resample each user track to ``num_frames`` (:func:`resample_trajectory`, one-point
    tracks moving by ``still_step`` in all) and stack: float32 (num_frames, N, 2)."""
    if len(tracks) == 0:
        raise TrajectoryError("no tracks to resample")
    return np.stack([resample_trajectory(t, num_frames, still_step) for t in tracks], axis=1)
