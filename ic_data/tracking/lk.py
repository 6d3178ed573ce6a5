"""The offline tracking backend: OpenCV pyramidal Lucas–Kanade (:class:`LKTracker`) and its
numeric helpers (bilinear sampling, neighbourhood fits)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np
from scipy.spatial import cKDTree

from ic_data.motion import levels_table
from ic_data.tracking.base import _check_inputs, _inside

__all__ = ["LKTracker"]


def _remap_is_exact() -> bool:
    """Whether ``cv2.remap`` interpolates float maps exactly.

    OpenCV 5.0 does; OpenCV 4 rounds positions to 1/32 px, coarser than the sub-pixel steps
    the template alignment takes, so where it does the sampling falls back to numpy.
    """
    ramp = np.tile(np.arange(16, dtype=np.float32), (2, 1))
    x = np.array([[3.0 + 1.0 / 1024.0, 7.3, 9.71]], np.float32)
    out = cv2.remap(ramp, x, np.ones_like(x), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return bool(np.abs(out - x).max() < 1e-4)


_EXACT_REMAP = _remap_is_exact()
_REMAP_ROWS = 32000  # cv2.remap takes maps of fewer than 2¹⁵ rows: longer ones go in parts


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample a float32 (H, W) image at float32 positions ``x``, ``y`` (same shape, ≥ 2-D),
    bilinear, replicating the border."""
    if x.size == 0:
        return np.zeros(x.shape, np.float32)
    if _EXACT_REMAP:
        # Positions a pixel or more beyond the border sample it alike; far ones would overflow.
        h, w = img.shape
        mx = np.clip(x, -1.0, w, dtype=np.float32).reshape(-1, x.shape[-1])
        my = np.clip(y, -1.0, h, dtype=np.float32).reshape(-1, x.shape[-1])
        parts = [
            cv2.remap(img, mx[i : i + _REMAP_ROWS], my[i : i + _REMAP_ROWS], cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REPLICATE)
            for i in range(0, len(mx), _REMAP_ROWS)
        ]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)).reshape(x.shape)
    h, w = img.shape
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(x.astype(np.int32), w - 2)
    y0 = np.minimum(y.astype(np.int32), h - 2)
    fx = np.subtract(x, x0, dtype=np.float32)
    fy = np.subtract(y, y0, dtype=np.float32)
    i = y0 * w
    i += x0
    flat = img.ravel()
    top_left, top_right = flat.take(i), flat.take(i + 1)
    i += w
    bottom_left, bottom_right = flat.take(i), flat.take(i + 1)
    top_right -= top_left
    top_right *= fx
    top_right += top_left
    bottom_right -= bottom_left
    bottom_right *= fx
    bottom_right += bottom_left
    bottom_right -= top_right
    bottom_right *= fy
    bottom_right += top_right
    return bottom_right


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a * b).sum(1)`` for (M, P) arrays, as M dot products: no (M, P) temporary."""
    return (a[:, None, :] @ b[:, :, None])[:, 0, 0]


def _moments(px, py, qx, qy) -> np.ndarray:
    """Per-point products (..., N, 13) whose sums over a neighbourhood give :func:`_linear_fit`
    everything it needs (float64 in, float64 out)."""
    return np.stack([px, py, qx, qy, px * px, px * py, py * py, qx * px, qx * py, qy * px, qy * py,
                     qx * qx, qy * qy], axis=-1)


def _linear_fit(sums: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares linear maps between point sets about their centroids, one per row.

    ``sums`` (Q, 13) are :func:`_moments` summed over ``k`` point pairs ``(p, q)``. Returns
    ``(a, good, rms, centroids)``: (Q, 2, 2) ``a`` with ``q − q̄ ≈ a (p − p̄)``, whether the
    ``p`` spread in 2-D (else ``a`` is 0), the rms of the residuals, and (Q, 4) ``p̄, q̄``.
    """
    mean = sums[:, :4] / k
    spx, spy, sqx, sqy = sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3]
    sxx = sums[:, 4] - spx * mean[:, 0]
    sxy = sums[:, 5] - spx * mean[:, 1]
    syy = sums[:, 6] - spy * mean[:, 1]
    cxx = sums[:, 7] - sqx * mean[:, 0]
    cxy = sums[:, 8] - sqx * mean[:, 1]
    cyx = sums[:, 9] - sqy * mean[:, 0]
    cyy = sums[:, 10] - sqy * mean[:, 1]
    qq = sums[:, 11] - sqx * mean[:, 2] + sums[:, 12] - sqy * mean[:, 3]
    det = sxx * syy - sxy * sxy
    good = det > 1e-3 * (sxx + syy) ** 2  # spread in 2-D
    inv_det = np.where(good, 1.0 / np.where(good, det, 1.0), 0.0)
    a = np.empty((len(sums), 2, 2))
    a[:, 0, 0] = (cxx * syy - cxy * sxy) * inv_det
    a[:, 0, 1] = (cxy * sxx - cxx * sxy) * inv_det
    a[:, 1, 0] = (cyx * syy - cyy * sxy) * inv_det
    a[:, 1, 1] = (cyy * sxx - cyx * sxy) * inv_det
    # For the least-squares a, the residual sum of squares is Σ|q − q̄|² − Σ a ∘ C.
    rss = qq - (a[:, 0, 0] * cxx + a[:, 0, 1] * cxy + a[:, 1, 0] * cyx + a[:, 1, 1] * cyy)
    return a, good, np.sqrt(np.maximum(rss, 0.0) / k), mean


#: How many times more a camera's motion may stretch the picture one way than the other.
MAX_STRETCH = 2.0


def _homography(src: np.ndarray, dst: np.ndarray, threshold_px: float) -> np.ndarray | None:
    """The scene's motion src → dst (N, 2) as a 3×3 homography: a full one where the points fix
    it (:func:`_full_homography`), else a similarity (:func:`_similarity`: fewer points fix one,
    as when a fast pan or a zoom has left a few textured points in view), else None."""
    h = _full_homography(src, dst, threshold_px)
    return h if h is not None else _similarity(src, dst, threshold_px)


def _full_homography(src: np.ndarray, dst: np.ndarray, threshold_px: float) -> np.ndarray | None:
    """A homography src → dst (N, 2) fitted by RANSAC, or None where the points cannot fix one.

    It needs 8 inliers and a quarter of the points among them, spread in 2-D (their narrower
    principal spread at least a tenth of the wider, so a line of points does not fit one that
    extrapolates off it), and a camera's shape: a zoom, roll or perspective stretches the
    picture about as much in every direction, so a map that stretches it more than
    ``MAX_STRETCH`` times more one way than the other (at the inliers' centre) is refused. Such
    a map fits two groups of points moving apart, e.g. the background's last textured column
    and a moving object's beside it (4.5× along x: 340 px off on the rest of the background).
    OpenCV's USAC draws from a fixed seed: the same points give the same fit.
    """
    if len(src) < 8:
        return None
    h, inliers = cv2.findHomography(src.astype(np.float64), dst.astype(np.float64), cv2.USAC_FAST,
                                    threshold_px, maxIters=500, confidence=0.99)
    if h is None or not np.isfinite(h).all():
        return None
    inliers = inliers.reshape(-1).astype(bool)
    if inliers.sum() < max(8, len(src) / 4):
        return None
    kept = src[inliers].astype(np.float64)
    spread = np.linalg.eigvalsh(np.cov(kept.T))
    if spread[0] < 0.01 * spread[1]:
        return None
    stretch = np.linalg.svd(_homography_jacobian(h, kept.mean(axis=0, keepdims=True))[0], compute_uv=False)
    return h if stretch[0] <= MAX_STRETCH * stretch[1] else None


def _similarity(src: np.ndarray, dst: np.ndarray, threshold_px: float) -> np.ndarray | None:
    """A similarity (shift, zoom, roll) src → dst as a 3×3 matrix where at least 3 of the points
    and half of them agree on one within ``threshold_px``, spread over 4 px or more (their wider
    principal spread); else None. RANSAC on pairs of points, from OpenCV's fixed seed."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if len(src) < 3:
        return None
    a, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold_px,
                                       maxIters=500, confidence=0.99)
    if a is None or not np.isfinite(a).all():
        return None
    explained = np.linalg.norm(src @ a[:, :2].T + a[:, 2] - dst, axis=1) <= threshold_px
    if explained.sum() < max(3, len(src) / 2) or np.linalg.eigvalsh(np.cov(src[explained].T))[1] < 16.0:
        return None
    return np.vstack([a, [0.0, 0.0, 1.0]])


def _apply_homography(h: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (..., 2) mapped by the homographies ``h`` (..., 3, 3), and whether each lands in
    front (a positive projective scale)."""
    w = h[..., 2, 0] * points[..., 0] + h[..., 2, 1] * points[..., 1] + h[..., 2, 2]
    front = w > 1e-6
    safe = np.where(front, w, 1.0)
    x = (h[..., 0, 0] * points[..., 0] + h[..., 0, 1] * points[..., 1] + h[..., 0, 2]) / safe
    y = (h[..., 1, 0] * points[..., 0] + h[..., 1, 1] * points[..., 1] + h[..., 1, 2]) / safe
    return np.stack([x, y], axis=-1), front


def _homography_jacobian(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(Q, 2, 2) derivative of the homography ``h`` (3, 3) at points (Q, 2): its local linear
    part there."""
    w = h[2, 0] * points[:, 0] + h[2, 1] * points[:, 1] + h[2, 2]
    mapped = (points @ h[:2, :2].T + h[:2, 2]) / w[:, None]
    jac = h[None, :2, :2] - mapped[:, :, None] * h[None, 2, None, :2]
    return jac / w[:, None, None]


def _repeat_last_step(models: list[np.ndarray | None]) -> np.ndarray | None:
    """The next frame's homography from frame 0 if the last step of ``models`` (frame 0 → each
    frame so far) repeats: constant velocity; the last one itself after a single known frame."""
    last = models[-1]
    if last is None:
        return None
    before = models[-2] if len(models) >= 2 else None
    if before is None:
        return last
    nxt = last @ np.linalg.inv(before) @ last
    return nxt / nxt[2, 2] if np.isfinite(nxt).all() and abs(nxt[2, 2]) > 1e-12 else last


def _surrounded(points: np.ndarray, around: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Whether each point lies inside the convex hull of its ``around`` points (Q, K, 2) where
    ``mask`` (Q, K): the directions to them leave no gap of half a turn or more."""
    delta = around - points[:, None]
    angle = np.where(mask, np.arctan2(delta[..., 1], delta[..., 0]), 4 * np.pi)
    angle.sort(axis=1)  # the masked-out ones last
    count = mask.sum(axis=1)
    k = np.arange(mask.shape[1])[None]
    gaps = np.where(k[:, 1:] < count[:, None], np.diff(angle, axis=1), 0.0)
    last = np.take_along_axis(angle, np.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
    wrap = angle[:, 0] + 2 * np.pi - last
    return (count >= 3) & (np.maximum(gaps.max(axis=1, initial=0.0), wrap) < np.pi)


def _median1(x: np.ndarray) -> np.ndarray:
    """``np.median(x, axis=1)`` by partial sorting (np.median's overhead dominates small arrays)."""
    n = x.shape[1]
    if n % 2:
        return np.partition(x, n // 2, axis=1)[:, n // 2]
    part = np.partition(x, [n // 2 - 1, n // 2], axis=1)
    return 0.5 * (part[:, n // 2 - 1] + part[:, n // 2])


@dataclass
class _Templates:
    """Reference patches warped to how they should look in the current frame."""

    values: np.ndarray  # (M, P) intensities less their window-weighted mean, P = win²
    grads: np.ndarray  # (M, 2, P) x and y gradients
    contrast: np.ndarray  # (M,) window-weighted standard deviation of ``values``
    textured: np.ndarray  # (M,) bool: contrast, and gradients in both directions
    cornered: np.ndarray  # (M,) bool: gradients strong in both directions, not along one edge
    normal: np.ndarray  # (M, 2) unit vector: the direction of the strongest gradients

    def take(self, rows: np.ndarray) -> _Templates:
        return _Templates(*(getattr(self, f.name)[rows] for f in fields(self)))


@dataclass
class LKTracker:
    """Pyramidal Lucas–Kanade with forward–backward checks: the offline tracking backend.

    For frame ``t`` and the points visible at ``t − 1``:

    1. *Chained step.* ``cv2.calcOpticalFlowPyrLK`` from frame ``t − 1`` to ``t`` and back, on
       grayscale frames. A point stays a candidate only if both solves converge, the round
       trip closes within ``fb_threshold_px`` and the point is inside the clip. The return
       solve starts where a consistent round trip ends, so it searches a shallower pyramid
       (``fb_max_level``) than the forward one (``max_level``).
    2. *Refinement against frame 0.* Chained LK drifts, and under zoom in a consistent
       direction (a translation-only window locks onto its strongest texture, which the zoom
       moves relative to the point): ≈0.5 px median and 1.5 px at frame 31 on a 1.006/frame
       zoom over real footage. So each point's frame-0 patch is warped by the local affine
       motion of its ``neighbours`` nearest tracks (frame 0 → t) and aligned to frame ``t`` by
       Gauss–Newton on the translation, started at the chained estimate, with a Gaussian window
       (``window_sigma_px``) and Cauchy weights (``robust_scale``) that discount pixels of
       another surface crossing the window. The result replaces the chained estimate when it
       converges within ``refine_tolerance_px`` of it (a point that strays a pixel beyond that
       is given up early). Measured alternatives that did not help on zooms: LK refinement
       against the unwarped frame-0 patch (``OPTFLOW_USE_INITIAL_FLOW``) or against a keyframe
       ≤ 8 frames old.
    3. *Appearance check.* The warped frame-0 patch must still describe the point: at least
       ``min_inlier_fraction`` of the pixels around it (Gaussian weights of
       ``occlusion_sigma_px``) match it up to a brightness offset, and their normalised
       cross-correlation reaches ``min_ncc``. This catches what the forward–backward check
       cannot: an occluder sliding over a point, whose texture LK follows in both directions.
       Points whose frame-0 patch has too little texture to be checked (``min_contrast`` grey
       levels, or gradients in only one direction) are reported invisible: their positions
       are predictions, not measurements.
    4. *Edges.* A window on a straight edge (its weaker gradient direction under
       ``min_corner_ratio`` of the stronger) fixes the position across the edge only: along
       it, the alignment drifts (by 5–10 px over a clip of a roll over real footage). Such a
       point keeps the alignment's position across the edge and takes the one along it from
       the motion of the visible points with texture in both directions
       (:meth:`_slide_along_edges`).
    5. *The scene's motion where the picture cannot tell.* A fast, textured object drags
       points of a background with little texture along one direction with it, and neither
       check tells: a visible point, or one found again, more than ``independent_motion_px``
       off the scene's homography (frame 0 → t) is also aligned where the scene takes it, and
       goes there if it matches at least as well (:meth:`_back_on_the_scene`).

    Invisible points move with their ``neighbours`` nearest visible points — nearest in position
    and in recent motion (``motion_weight``), so a background point next to a moving object
    follows the background — from the frame where they were last seen: an affine fit of the
    neighbours' displacements where it explains them; else the scene's homography (fitted by
    RANSAC to all visible points, frame 0 → t) where it explains them, as where the nearest
    visible points are few, far, or along one edge (footage with little texture); their
    median otherwise; a point without texture beside an object that moves on its own, but
    outside it, with the scene. A point lost
    after a steady motion relative to its neighbourhood (a point on a moving object) keeps that
    relative velocity. Each frame, hidden points are searched for near their prediction (LK
    from their last visible appearance while they have been hidden at most ``search_frames``
    frames, the prediction itself, and where the nearest independently moving anchor would
    have taken them, each refined against frame 0) and become visible again when the
    appearance check passes.

    Each step handles all the points of a frame together: one LK call per image pair, patches
    sampled with one ``cv2.remap`` call (where it interpolates float maps exactly, as OpenCV 5
    does; else the same bilinear sampling in numpy, as OpenCV 4 rounds to 1/32 px), Gauss–Newton
    iterating until every point has converged or been given up, neighbourhood fits from summed
    moments. Deterministic: a fixed computation on the frames (OpenCV's LK solves each point on
    its own); nothing is random. ``version`` changes whenever the algorithm or its defaults do
    (version 2: the shallower return solve, the given-up refinements, and the LK search limited
    to recently hidden points; version 3: the frame-0 patch follows its neighbours' affine fit
    up to 4× in scale either way and ``max_template_residual_px`` rms, where it fell back to
    the unwarped patch beyond √2× or 1 px: a 1.015/frame zoom's last-frame p90 went from 2.2 to
    0.2 px, and a roll of 0.5°/frame over real footage drifted less, p90 1.8 → 0.65 px;
    version 4: the scene's homography where the neighbours fix no affine, and points on edges
    slid along them: over a frame of real footage with little texture (bikes.mp4, a road) under
    a roll of 0.5°/frame, the p90 error of the points in view went from 10.5 to 0.6 px, of the
    visible ones from 4.6 to 0.5 px; version 5: points without texture beside a moving object
    but outside it move with the scene (:meth:`_outside_movers`), and hidden points are also
    searched for where the nearest independently moving anchor would have taken them
    (:meth:`_mover_starts`): over the same road with two textured objects crossing it, the
    share of background point-frames more than 4 px off went from 29–37 % to 3–6 %, and over
    12 scenes of real frames with objects, the share of object point-frames from 13.4 to 7.0 %;
    version 6: points lost by the chained step are solved again from where their own last step
    takes them (:meth:`_step_with_own_motion`), points with no visible anchor left move with the
    scene's last motion instead of returning to where they were last seen, the scene's
    homography may not stretch one way more than ``MAX_STRETCH`` times the other, and where
    the points fix none, a similarity stands in for it (from 3 points): with the
    camera panning 15 px/frame past two objects it follows, over four frames of real footage,
    the share of the objects’ point-frames more than 4 px off went from 42–74 % to 6–23 %, and
    under pans of 16–35 px/frame, where the textured points leave the frame, from 2–31 % of
    the visible point-frames wrong (some predictions 350 px off) to under 1 %; version 7: a
    frame whose light changed is matched to the levels of the one before it
    (:meth:`_chained_step`): under a flicker of ±10 % a frame over real footage, still or
    panning or rolling, the share of point-frames more than 4 px off went from 3.6–67 % to
    at most 1.8 %; under steady light every error the tracking tests measure is unchanged;
    version 8: points off the scene's motion go back on it where they match there at least as
    well (:meth:`_back_on_the_scene`): over 25 scenes of real frames with three textured objects
    crossing them at 4–12 px/frame, the share of visible point-frames more than 4 px off went
    from 6.3 to 1.8 %, and of the background points found again after an object passed over
    them from 20 to 1.3 %, while 0.70 of them were found again, not 0.60).
    """

    win_size: int = 21
    max_level: int = 3
    fb_threshold_px: float = 1.0
    fb_max_level: int = 1
    refine: bool = True
    refine_tolerance_px: float = 2.0
    window_sigma_px: float = 5.0
    robust_scale: float = 10.0
    occlusion_sigma_px: float = 3.0
    min_inlier_fraction: float = 0.7
    min_ncc: float = 0.7
    inlier_tolerance: float = 8.0
    inlier_tolerance_rel: float = 0.3
    min_contrast: float = 4.0
    min_texture: float = 0.05
    min_corner_ratio: float = 0.05
    neighbours: int = 8
    max_affine_residual_px: float = 1.0
    independent_motion_px: float = 4.0
    mover_radius_px: float = 30.0
    max_template_residual_px: float = 3.0
    reacquire_radius_px: float = 6.0
    search_frames: int = 4
    steady_motion_px: float = 0.5
    history_frames: int = 4
    motion_weight: float = 8.0
    own_motion_levels: int = 1
    max_iterations: int = 20
    epsilon_px: float = 0.01
    level_patch_px: int = 5
    min_level_points: int = 20
    max_level_shift: float = 2.0
    min_level_gain: float = 0.7

    name: str = "lk"
    version: str = "8"

    def __post_init__(self) -> None:
        if self.win_size < 5 or self.win_size % 2 == 0:
            raise ValueError(f"win_size must be odd and ≥ 5, got {self.win_size}")
        if self.neighbours < 1:
            raise ValueError(f"neighbours must be ≥ 1, got {self.neighbours}")
        if min(self.fb_max_level, self.max_level, self.own_motion_levels) < 0:
            raise ValueError(f"pyramid levels must be ≥ 0, got {self.max_level}, {self.fb_max_level} and "
                             f"{self.own_motion_levels}")
        half = self.win_size // 2
        ox, oy = np.meshgrid(np.arange(-half - 1, half + 2), np.arange(-half - 1, half + 2))
        self._offsets_margin = np.stack([ox.ravel(), oy.ravel()]).astype(np.float32)  # (2, (win+2)²)
        inner = np.stack([ox[1:-1, 1:-1], oy[1:-1, 1:-1]])
        self._offsets = inner.reshape(2, -1).astype(np.float32)  # (2, win²)
        r2 = (self._offsets**2).sum(0)
        self._weights = _normalised(np.exp(-r2 / (2.0 * self.window_sigma_px**2)))
        self._occlusion_weights = _normalised(np.exp(-r2 / (2.0 * self.occlusion_sigma_px**2)))
        self._central = np.flatnonzero(r2 <= max(1.0, self.occlusion_sigma_px) ** 2)

    # -- the tracking loop ------------------------------------------------------------------

    def track(self, frames: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames, points = _check_inputs(frames, points)
        num_frames, height, width = frames.shape[:3]
        n = len(points)
        tracks = np.zeros((num_frames, n, 2), np.float32)
        visible = np.zeros((num_frames, n), bool)
        tracks[0] = points
        visible[0] = True
        if n == 0 or num_frames == 1:
            return tracks, visible

        grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        ref = grays[0].astype(np.float32)
        last_t = np.zeros(n, np.int64)  # last frame where each point was visible
        # Points without texture in frame 0 can never be verified: they are only predicted.
        at_start = self._templates(ref, points, np.tile(np.eye(2), (n, 1, 1)))
        trackable, cornered = at_start.textured, at_start.cornered
        # Each point's nearest points in frame 0, closest first: the local affine motion is
        # fitted to the nearest visible ones, which are usually among them.
        closest = cKDTree(points.astype(np.float64)).query(points, k=min(n, 4 * self.neighbours))[1]
        closest = np.asarray(closest).reshape(n, -1)
        relative_velocity = np.zeros((n, 2), np.float32)  # of lost points, px/frame
        # The scene's homography frame 0 → t of each frame so far (None where the points with
        # texture in both directions fix none): the fallback where neighbours fix no affine.
        scene: list[np.ndarray | None] = [np.eye(3)]
        # The same where a frame fixes one; where it does not (every point in view hidden, as
        # when a fast pan has carried the textured ones out), the last step of the scene's
        # motion repeated: what points without any visible anchor move with.
        extrapolated: list[np.ndarray | None] = [np.eye(3)]

        def between(frames_a, frames_b, models=scene) -> np.ndarray:
            """(G, 3, 3) homographies from frames ``a`` to ``b`` (NaN where either has none)."""
            out = np.full((len(frames_a), 3, 3), np.nan)
            for i, (a, b) in enumerate(zip(frames_a, frames_b)):
                if models[a] is not None and models[b] is not None:
                    out[i] = models[b] @ np.linalg.inv(models[a])
            return out

        for t in range(1, num_frames):
            cur = tracks[t - 1].copy()
            vis = np.zeros(n, bool)

            idx = np.flatnonzero(visible[t - 1])
            moved, ok = self._chained_step(grays, t, cur[idx])
            image = grays[t].astype(np.float32)
            cur[idx] = moved
            vis[idx] = ok & _inside(moved, width, height)

            idx = np.flatnonzero(vis)
            chained = None
            if len(idx):
                chained = _homography(points[vis], cur[vis], self.max_affine_residual_px)
                affine = self._local_affine(points, closest, cur, vis, idx, chained)
                tmpl = self._templates(ref, points[idx], affine)
                cur[idx], score = self._refine(image, tmpl, cur[idx])
                vis[idx] = tmpl.textured & (score >= self.min_ncc)
                seen = np.flatnonzero(vis[idx])
                pos = cur[idx[seen]]
                self._back_on_the_scene(image, tmpl.take(seen), pos, score[seen], points[idx[seen]], chained)
                cur[idx[seen]] = pos
            self._step_with_own_motion(grays, ref, image, tracks, visible, points, closest, trackable, cur, vis,
                                       t, chained)
            scene.append(_homography(points[vis], cur[vis], self.max_affine_residual_px))
            extrapolated.append(scene[t] if scene[t] is not None else _repeat_last_step(extrapolated))

            hidden = np.flatnonzero(~vis)
            if t >= 3:
                # A point lost after two steps of the same motion relative to its neighbourhood
                # (a point on a moving object) keeps that relative motion while hidden. A point
                # whose last step differed (pulled by an approaching occluder) does not.
                lost = hidden[visible[t - 1, hidden] & visible[t - 2, hidden] & visible[t - 3, hidden]]
                if len(lost):
                    last, before = self._relative_steps(tracks, visible, [t - 2, t - 3], lost, between)
                    steady = np.linalg.norm(last - before, axis=1) <= self.steady_motion_px
                    relative_velocity[lost] = np.where(steady[:, None], 0.5 * (last + before), 0.0)
            if len(hidden):
                # Predicted from the frame where each was last seen in one step, not by chaining
                # per-frame steps, so predictions do not drift; all such frames in one batch.
                seen, group = np.unique(last_t[hidden], return_inverse=True)
                past = np.maximum(seen - self.history_frames, 0)
                anchors = vis & visible[seen] & visible[past]
                ref_pos = tracks[seen]
                motion, _ = self._neighbour_motion(ref_pos, np.broadcast_to(cur, ref_pos.shape), anchors,
                                                group, hidden, ref_pos - tracks[past],
                                                between(seen, [t] * len(seen)), unseen=last_t[hidden] == 0)
                # Where no point is visible to move with, the scene's motion goes on as it went;
                # with none known, such a point stays where it was last put (not where last seen).
                alone = np.flatnonzero(~anchors.any(axis=1)[group])
                if len(alone):
                    h = between(seen, [t] * len(seen), extrapolated)[group[alone]]
                    at = ref_pos[group[alone], hidden[alone]].astype(np.float64)
                    moved, ahead = _apply_homography(h, at)
                    known = np.isfinite(h).all(axis=(1, 2)) & ahead
                    motion[alone] = np.where(known[:, None], moved - at,
                                             tracks[t - 1, hidden[alone]] - tracks[last_t[hidden[alone]], hidden[alone]])
                steps = (t - last_t[hidden]).astype(np.float32)[:, None]
                cur[hidden] = tracks[last_t[hidden], hidden] + motion + relative_velocity[hidden] * steps

            searchable = hidden[trackable[hidden]]
            found = self._reacquire(grays, ref, image, tracks, points, closest, last_t, cur, vis, t,
                                    searchable, scene[t])
            vis[found] = True
            self._slide_along_edges(ref, image, points, closest, tracks, visible, cornered, cur, vis, t,
                                    scene[t])

            tracks[t] = cur
            visible[t] = vis
            last_t[vis] = t
        return tracks, visible

    def _back_on_the_scene(self, image, tmpl: _Templates, pos, score, ref_pos, scene) -> None:
        """Positions ``pos`` (their frame-0 patches ``tmpl`` matching there to ``score``) that
        have left the scene's motion go back on it where the patch matches there at least as
        well (``pos`` and ``score`` updated in place).

        A fast, textured object drags the points of a background with little texture along one
        direction (a road, blinds): LK follows the object where its texture dominates the window,
        and neither the round trip nor the frame-0 patch tells the dragged position from the true
        one, since the texture repeats along the drag. Such a point keeps its offset for the rest
        of the clip, and a point found again after the object passed over it is often found
        where the object's motion put it. So a position more than ``independent_motion_px``
        from where the scene's homography ``scene`` (frame 0 → t) takes the point from
        ``ref_pos`` (frame 0) is also refined from there, and moved there if it matches at
        least as well: where the picture cannot tell, the scene's motion wins. A point on an
        object that moves on its own keeps its position: its patch does not match the
        background where the scene would have taken it.
        """
        if scene is None or len(pos) == 0:
            return
        sel = np.flatnonzero(self._against_scene(scene, ref_pos, pos)[1])
        if len(sel) == 0:
            return
        on_scene, _ = _apply_homography(scene, np.asarray(ref_pos[sel], np.float64))
        moved, matched = self._refine(image, tmpl.take(sel), on_scene.astype(np.float32))
        height, width = image.shape
        back = (matched >= self.min_ncc) & ~(matched < score[sel]) & _inside(moved, width, height)
        pos[sel[back]], score[sel[back]] = moved[back], matched[back]

    def _chained_step(self, grays: list[np.ndarray], t: int, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LK from frame t − 1 to t and back (:meth:`_lk_checked`), where the light may change.

        LK takes a change of brightness for motion: a flicker of ±10 % a frame (a gain, an
        offset or a gamma) over still real footage put 3–45 % of the point-frames more than
        4 px off. So where frame t's levels, matched to frame t − 1's distribution
        (:func:`ic_data.motion.levels_table`), move its pixels by more than ``max_level_shift``
        grey levels on average, the step is solved again on the matched frame t, and that is
        taken, for this step and for all that compare with frame t (``grays[t]`` is replaced),
        where the points it tracked say the light changed (:meth:`_light_changed`). Histograms
        also change with what motion brings into the picture, so they alone never decide. A
        flicker of ±5 % a frame moves the pixels by 2.7 levels or more; the second solve ran on
        6.5 % of the frame pairs of the curation benchmark's clips (steady light), and costs
        5–15 % more time on synthetic clips of fast motion (pans of 8–35 px a frame, rolls,
        turns).
        """
        moved, ok = self._lk_checked(grays[t - 1], grays[t], pts)
        if len(pts) == 0:
            return moved, ok
        table = levels_table(grays[t], grays[t - 1])
        if _level_shift(table, grays[t]) <= self.max_level_shift:
            return moved, ok
        matched = cv2.LUT(grays[t], table)
        moved_m, ok_m = self._lk_checked(grays[t - 1], matched, pts)
        if self._light_changed(grays[t - 1], grays[t], table, pts[ok_m], moved_m[ok_m]):
            grays[t] = matched
            return moved_m, ok_m
        return moved, ok

    def _light_changed(self, img_a, img_b, table: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray) -> bool:
        """Whether the points tracked a → b (at least ``min_level_points``) say that ``table``
        undoes a change of light: the levels around them in b (``level_patch_px`` squares,
        bilinear), through the table, come at least ``min_level_gain`` closer to those around
        them in a than unchanged (median absolute difference), by more than a grey level."""
        if len(pts_a) < self.min_level_points:
            return False
        half = self.level_patch_px // 2
        ox, oy = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1))
        offsets = np.stack([ox.ravel(), oy.ravel()], -1).astype(np.float32)  # (P, 2)
        at_a = pts_a[:, None, :] + offsets
        at_b = pts_b[:, None, :] + offsets
        a = _bilinear(img_a.astype(np.float32), at_a[..., 0], at_a[..., 1]).ravel()
        b = _bilinear(img_b.astype(np.float32), at_b[..., 0], at_b[..., 1]).ravel()
        unchanged = float(np.median(np.abs(a - b)))
        matched = float(np.median(np.abs(a - table[np.clip(np.rint(b), 0, 255).astype(np.intp)])))
        return matched < self.min_level_gain * unchanged and unchanged - matched > 1.0

    def _step_with_own_motion(self, grays, ref, image, tracks, visible, points, closest, trackable, cur, vis, t,
                              chained) -> None:
        """Points the chained step lost, solved again from where their own last step takes
        them, searching ``own_motion_levels`` pyramid levels only (``cur`` and ``vis`` updated
        in place).

        A pyramid's coarse levels see a small object inside a window of its background: where
        the two move apart by more than the finest levels can search (a camera panning past an
        object it follows), the solve for the object's points goes with the background and
        fails its checks, and the object is lost within two frames. Started where the point's
        own motion puts it, a shallow solve finds it; it must pass the same round trip and
        appearance checks against frame 0.
        """
        lost = np.flatnonzero(visible[t - 1] & ~vis & trackable)
        if len(lost) == 0:
            return
        last = tracks[t - 1, lost]
        start = last.copy()
        if t >= 2:
            steady = visible[t - 2, lost]
            start[steady] += last[steady] - tracks[t - 2, lost[steady]]
        levels = min(self.own_motion_levels, self.max_level)
        found, ok = self._lk(grays[t - 1], grays[t], last, start, max_level=levels)
        height, width = image.shape
        ok &= _inside(found, width, height)
        if ok.any():
            ok[ok] = self._lk_back(grays[t - 1], grays[t], last[ok], found[ok])
        sel = lost[ok]
        if len(sel) == 0:
            return
        tmpl = self._templates(ref, points[sel], self._local_affine(points, closest, cur, vis, sel, chained))
        pos, score = self._refine(image, tmpl, found[ok])
        good = tmpl.textured & (score >= self.min_ncc) & _inside(pos, width, height)
        cur[sel[good]] = pos[good]
        vis[sel[good]] = True

    def _relative_steps(self, tracks, visible, frames, sel, between) -> np.ndarray:
        """(len(frames), S, 2): displacement of points ``sel`` from each frame k to k + 1, less
        their neighbourhood's (``between(a, b)``: the scene's homographies from frames a to b)."""
        ks = np.asarray(frames)
        past = np.maximum(ks - self.history_frames, 0)
        anchors = visible[ks] & visible[ks + 1] & visible[past]
        group = np.repeat(np.arange(len(ks)), len(sel))
        query = np.tile(sel, len(ks))
        motion, _ = self._neighbour_motion(tracks[ks], tracks[ks + 1], anchors, group, query,
                                        tracks[ks] - tracks[past], between(ks, ks + 1))
        own = tracks[ks + 1][:, sel] - tracks[ks][:, sel]
        return own - motion.reshape(len(ks), len(sel), 2)

    def _slide_along_edges(self, ref, image, points, closest, tracks, visible, cornered, cur, vis, t,
                           scene) -> None:
        """Visible points on a straight edge take their position along it from their neighbours.

        A window on an edge fixes the position across the edge only: along it, alignment
        slides wherever the chained steps pushed it (on a roll over real footage, by 5–10 px in
        a clip). So the component along the edge comes from the motion of the visible points
        with texture in both directions around it (an affine of the nearest ones, or the
        scene's homography ``scene`` where it explains them: :meth:`_neighbour_motion`), and only the
        component across it from the alignment, where the window there still matches the point's
        frame-0 patch (an edge that ends, or bends, tells a wrong prediction). Where neither fits
        or the window does not match, the alignment stands. ``cur`` is updated in place.
        """
        edge = np.flatnonzero(vis & ~cornered)
        anchors = vis & cornered
        if len(edge) == 0 or anchors.sum() < 4:
            return
        past = max(t - self.history_frames, 0)
        anchors &= visible[past]
        history = (cur - tracks[past])[None]
        motion, fitted = self._neighbour_motion(points[None], cur[None], anchors[None], np.zeros(len(edge), np.intp),
                                                edge, history, None if scene is None else scene[None])
        edge, predicted = edge[fitted], points[edge[fitted]] + motion[fitted]
        if len(edge) == 0:
            return
        tmpl = self._templates(ref, points[edge], self._local_affine(points, closest, cur, vis, edge, scene))
        across = np.einsum("ij,ij->i", cur[edge] - predicted, tmpl.normal)
        slid = predicted + across[:, None] * tmpl.normal
        height, width = ref.shape
        keep = _inside(slid, width, height) & (self._matches(image, tmpl, slid) >= self.min_ncc)
        cur[edge[keep]] = slid[keep]

    def _reacquire(self, grays, ref, image, tracks, points, closest, last_t, cur, vis, t, hidden, scene):
        """Indices of hidden points found again near their prediction (``cur`` updated in place)."""
        height, width = grays[0].shape
        candidates = hidden[_inside(cur[hidden], width, height)]
        if len(candidates) == 0:
            return candidates
        predicted = cur[candidates].copy()
        searched = predicted.copy()
        # LK from the last visible appearance, for points lost at most ``search_frames`` ago: one
        # call per frame they were last seen in.
        recent = candidates[t - last_t[candidates] <= self.search_frames]
        for k in np.unique(last_t[recent]):
            group = np.flatnonzero(last_t[candidates] == k)
            idx = candidates[group]
            found, ok = self._lk(grays[k], grays[t], tracks[k, idx], predicted[group])
            ok &= np.linalg.norm(found - predicted[group], axis=1) <= self.reacquire_radius_px
            if ok.any():
                ok[ok] = self._lk_back(grays[k], grays[t], tracks[k, idx[ok]], found[ok])
                searched[group[ok]] = found[ok]
        # Two starts: where LK went, and the prediction itself (near a motion boundary LK
        # follows the dominant surface, which need not be the point's). Both share the point's
        # template, and are refined in one batch; a start LK did not move is refined once.
        affine = self._local_affine(points, closest, cur, vis, candidates, scene)
        tmpl = self._templates(ref, points[candidates], affine)
        moved = np.flatnonzero((searched != predicted).any(axis=1))
        # A third start where the prediction may have taken the wrong surface: with the nearest
        # independently moving anchor (:meth:`_mover_starts`).
        other, start = self._mover_starts(points, cur, vis, candidates, scene, np.stack([predicted, searched]))
        pos_all, score_all = self._refine(
            image, tmpl.take(np.concatenate([np.arange(len(candidates)), moved, other])),
            np.concatenate([predicted, searched[moved], start]),
        )
        n, m = len(candidates), len(moved)
        pos, score = pos_all[:n], score_all[:n]
        pos_s, score_s = pos_all[n : n + m], score_all[n : n + m]
        use_s = ~(score[moved] > score_s)  # the LK start wins ties
        pos[moved[use_s]], score[moved[use_s]] = pos_s[use_s], score_s[use_s]
        pos_o, score_o = pos_all[n + m :], score_all[n + m :]
        use_o = score_o > np.where(np.isnan(score[other]), -np.inf, score[other])  # only if it matches better
        pos[other[use_o]], score[other[use_o]] = pos_o[use_o], score_o[use_o]
        self._back_on_the_scene(image, tmpl, pos, score, points[candidates], scene)
        back = tmpl.textured & (score >= self.min_ncc) & _inside(pos, width, height)
        cur[candidates[back]] = pos[back]
        return candidates[back]

    def _against_scene(self, h, src, dst) -> tuple[np.ndarray, np.ndarray]:
        """For points moved ``src`` → ``dst``: whether the homography ``h`` explains each (within
        ``max_affine_residual_px``), and whether each moves on its own, an object's point (missed
        by more than ``independent_motion_px``)."""
        mapped, front = _apply_homography(h, np.asarray(src, np.float64))
        residual = np.linalg.norm(mapped - dst, axis=1)
        return front & (residual <= self.max_affine_residual_px), front & (residual > self.independent_motion_px)

    def _mover_starts(self, points, cur, vis, candidates, scene, tried) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``candidates``, starts): where each hidden point would be had it moved
        as the nearest independently moving anchor did since frame 0 (one the scene's homography
        ``scene`` misses by more than ``independent_motion_px``, at most ``mover_radius_px`` away
        in frame 0), for points whose other starts ``tried`` (S, C, 2) lie elsewhere.

        A point at an object's rim loses its window to the background's motion at once, and its
        prediction from its nearest anchors, mostly background ones, goes with the scene: it is
        then never searched for where it is. Refined against its template like the other starts,
        this one is kept only where it matches best, so a background point the object passed
        over (whose template is not the object's) is not taken along.
        """
        none = np.zeros(0, np.intp), np.zeros((0, 2), np.float32)
        anchors = np.flatnonzero(vis)
        if scene is None or len(candidates) == 0 or len(anchors) == 0:
            return none
        movers = anchors[self._against_scene(scene, points[anchors], cur[anchors])[1]]
        if len(movers) == 0:
            return none
        dist = np.linalg.norm(points[candidates][:, None] - points[movers][None], axis=2)
        nearest = dist.argmin(axis=1)
        start = (points[candidates] + cur[movers[nearest]] - points[movers[nearest]]).astype(np.float32)
        elsewhere = (np.linalg.norm(tried - start[None], axis=2) > 1.0).all(axis=0)
        other = np.flatnonzero((dist[np.arange(len(candidates)), nearest] <= self.mover_radius_px) & elsewhere)
        return other, start[other]

    # -- pyramidal LK (OpenCV) -------------------------------------------------------------

    def _lk(self, img_a, img_b, pts_a: np.ndarray, init_b: np.ndarray | None = None, max_level=None):
        """LK a→b (from ``init_b`` if given): positions in b and whether each solve converged.

        The Python binding cannot take prebuilt pyramids, so every call builds its own: calls
        are per image pair, never per point.
        """
        pts_a = np.ascontiguousarray(pts_a, np.float32).reshape(-1, 1, 2)
        flags = 0
        if init_b is not None:
            init_b = np.ascontiguousarray(init_b, np.float32).reshape(-1, 1, 2).copy()
            flags = cv2.OPTFLOW_USE_INITIAL_FLOW
        pts_b, status, _ = cv2.calcOpticalFlowPyrLK(
            img_a, img_b, pts_a, init_b,
            winSize=(self.win_size, self.win_size),
            maxLevel=self.max_level if max_level is None else max_level, flags=flags,
            criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, self.max_iterations, 0.01),
        )
        pts_b = pts_b.reshape(-1, 2)
        return pts_b, status.reshape(-1).astype(bool) & np.isfinite(pts_b).all(axis=1)

    def _lk_back(self, img_a, img_b, pts_a, pts_b) -> np.ndarray:
        """Whether LK b→a from ``pts_b``, started at ``pts_a``, converges within ``fb_threshold_px``
        of it."""
        back, ok = self._lk(img_b, img_a, pts_b, pts_a, max_level=min(self.fb_max_level, self.max_level))
        return ok & (np.linalg.norm(back - pts_a, axis=1) <= self.fb_threshold_px)

    def _lk_checked(self, img_a, img_b, pts_a, init_b=None):
        """LK a→b and back: positions in b, and whether both converged and the round trip closed."""
        if len(pts_a) == 0:
            return np.zeros((0, 2), np.float32), np.zeros(0, bool)
        pts_b, ok = self._lk(img_a, img_b, pts_a, init_b)
        if ok.any():  # LK solves each point on its own: the failed ones need no round trip
            ok[ok] = self._lk_back(img_a, img_b, pts_a[ok], pts_b[ok])
        return pts_b, ok

    # -- neighbourhood motion ---------------------------------------------------------------

    def _nearest(self, features, anchor_mask, group, query) -> tuple[np.ndarray, np.ndarray]:
        """Each query point's nearest anchors among the points of its group, by brute force.

        ``features`` (G, N, F) describe every point in each group, ``anchor_mask`` (G, N) marks
        the group's anchors, ``group`` and ``query`` (Q,) give each query's group and point.
        Returns ``(nn, count)``: (Q, neighbours) point indices, of which the first
        ``count = min(neighbours, anchors in the group)`` of each row are anchors. Of several
        equidistant anchors, which are taken is fixed but arbitrary.
        """
        nn = np.zeros((len(query), self.neighbours), np.intp)
        count = np.minimum(anchor_mask.sum(axis=1), self.neighbours)[group]
        union = np.flatnonzero(anchor_mask[np.unique(group)].any(axis=0))  # anchors of any group
        k = min(self.neighbours, len(union))
        if k == 0:
            return nn, count
        candidates, usable = features[:, union], anchor_mask[:, union]
        step = max(1, (1 << 18) // candidates[0].size)  # bounded (rows, anchors, F) temporaries
        for i in range(0, len(query), step):
            g, q = group[i : i + step], query[i : i + step]
            diff = candidates[g] - features[g, q][:, None, :]
            dist = np.einsum("qnf,qnf->qn", diff, diff)
            dist[~usable[g]] = np.inf
            if k < len(union):
                part = np.argpartition(dist, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(k), dist.shape)
            few = count[i : i + step] < k  # there, the group's anchors first
            if few.any():
                part = part.copy()
                order = np.argsort(np.take_along_axis(dist[few], part[few], axis=1), axis=1, kind="stable")
                part[few] = np.take_along_axis(part[few], order, axis=1)
            nn[i : i + step, :k] = union[part]
        return nn, count

    def _local_affine(self, ref_pos, closest, cur_pos, anchor_mask, query, homography=None) -> np.ndarray:
        """(Q, 2, 2) linear part of the motion ref → cur around each query point.

        Least squares over the nearest anchors; where the fit is ill-posed or does not explain
        them (a motion boundary, too few anchors, anchors along one edge), the derivative of
        ``homography`` (the scene's, ref → cur) at the point if that explains them, else the
        identity. ``closest`` (N, L) lists each
        point's nearest points in ``ref_pos``, closest first: the nearest anchors are read from
        it where it holds enough of them, searched for among all anchors otherwise.
        """
        out = np.tile(np.eye(2), (len(query), 1, 1))
        k = min(self.neighbours, int(anchor_mask.sum()))
        if k < 3 or len(query) == 0:
            return out
        candidates = closest[query]
        usable = anchor_mask[candidates]
        rank = np.cumsum(usable, axis=1)
        listed = rank[:, -1] >= k
        nn = np.zeros((len(query), k), np.intp)
        nn[listed] = candidates[listed][usable[listed] & (rank[listed] <= k)].reshape(-1, k)
        if not listed.all():
            rest = np.flatnonzero(~listed)
            features = ref_pos[None].astype(np.float64)
            found, _ = self._nearest(features, anchor_mask[None], np.zeros(len(rest), np.intp), query[rest])
            nn[rest] = found[:, :k]
        moments = _moments(*ref_pos.T.astype(np.float64), *cur_pos.T.astype(np.float64))
        a, good, rms, _ = _linear_fit(moments[nn].sum(axis=1), k)
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        good &= (rms <= self.max_template_residual_px) & (det > 1 / 16) & (det < 16)
        out[good] = a[good]
        bad = np.flatnonzero(~good)
        h = homography
        if h is not None and len(bad):
            # Where the neighbours fix no affine (too few, or all along one edge), the scene's
            # homography does if it explains them: its derivative at the point.
            nb = nn[bad]
            mapped, front = _apply_homography(h, ref_pos[nb].astype(np.float64))
            residual = np.linalg.norm(mapped - cur_pos[nb], axis=2)
            jac = _homography_jacobian(h, ref_pos[query[bad]].astype(np.float64))
            det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
            use = front.all(axis=1) & (residual.max(axis=1) <= self.max_template_residual_px)
            use &= (det > 1 / 16) & (det < 16)
            out[bad[use]] = jac[use]
        return out

    def _neighbour_motion(self, ref_pos, cur_pos, anchor_mask, group, query, history=None,
                          homographies=None, unseen=None) -> tuple[np.ndarray, np.ndarray]:
        """Displacement ref → cur at each query point, from its nearest anchors' displacements.

        An affine fit where it explains them (smooth camera motion: zoom, rotation); else the
        group's homography (``homographies``, NaN where there is none) where it explains them
        (anchors too few, or along one edge, to fix an affine); their median otherwise (robust
        when the neighbours straddle two motions). All arguments but ``group`` and ``query``
        (Q,) are per group: positions (G, N, 2) in the reference and the current frame, anchors
        (G, N), recent displacements (G, N, 2) and homographies (G, 3, 3), so that predictions
        from several reference frames are made in one batch. Returns the (Q, 2) displacements
        and whether each came from a fit (affine or homography) rather than a median.
        """
        ref64 = ref_pos.astype(np.float64)
        features = ref64 if history is None else np.concatenate([ref64, self.motion_weight * history], axis=2)
        nn, count = self._nearest(features, anchor_mask, group, query)
        motion = np.zeros((len(query), 2))
        fitted = np.zeros(len(query), bool)
        disp = (cur_pos - ref_pos).astype(np.float64)  # (G, N, 2)
        moments = _moments(ref64[..., 0], ref64[..., 1], disp[..., 0], disp[..., 1])  # (G, N, 13)
        for k in np.unique(count[count > 0]):  # one pass, unless some groups have few anchors
            rows = np.flatnonzero(count == k)
            g, idx = group[rows, None], nn[rows, :k]
            motion[rows, 0] = _median1(disp[..., 0][g, idx])
            motion[rows, 1] = _median1(disp[..., 1][g, idx])
            if k >= 4:
                lin, ok, rms, mean = _linear_fit(moments[g, idx].sum(axis=1), k)
                ok &= rms <= 0.5 * self.max_affine_residual_px
                here = ref64[group[rows], query[rows]] - mean[:, :2]
                affine = mean[:, 2:] + np.einsum("qij,qj->qi", lin, here)
                motion[rows[ok]] = affine[ok]
                fitted[rows[ok]] = True
        # Where the nearest anchors fix no affine (too few near, or all along one edge, as on
        # footage with little texture), the homography of the group's anchors, if it explains
        # them: a camera's zoom or roll moves a point far from any anchor, which their median
        # misses.
        rest = np.flatnonzero(~fitted & (count > 0)) if homographies is not None else np.zeros(0, np.intp)
        for g in np.unique(group[rest]):
            h = homographies[g]
            if not np.isfinite(h).all():
                continue
            rows = rest[group[rest] == g]
            idx = nn[rows]
            mapped, front = _apply_homography(h, ref64[g][idx])
            residual = np.linalg.norm(mapped - (ref64[g][idx] + disp[g][idx]), axis=2)
            typical = np.empty(len(rows))
            for k in np.unique(count[rows]):  # the first count[row] neighbours are anchors
                same = count[rows] == k
                typical[same] = _median1(residual[same, :k])
            here = ref64[g, query[rows]]
            moved, ahead = _apply_homography(h, here)
            agree = ahead & (typical <= self.max_affine_residual_px)
            motion[rows[agree]] = (moved - here)[agree]
            fitted[rows[agree]] = True
        if unseen is not None and homographies is not None:
            self._outside_movers(ref64, disp, anchor_mask, group, query, nn, count, homographies, unseen,
                                 motion, fitted)
        return motion.astype(np.float32), fitted

    def _outside_movers(self, ref64, disp, anchor_mask, group, query, nn, count, homographies, unseen,
                        motion, fitted) -> None:
        """Points never seen to move (no texture of their own) beside an independently moving
        object, but outside it, move with the scene (its homography), not with the object.

        Which surface a point without texture lies on is not in its patch: its nearest anchors
        decide, and on footage with little texture those are often a textured object's, far
        richer in anchors than the flat ground around it (a road beside a car: the road followed
        the car). Here the scene's motion is the homography where it explains at least half of
        the anchors near the frame's border (``margin``: an eighth of its smaller side), where
        the background is and objects seldom are: the anchors it misses by more than
        ``independent_motion_px`` are movers. A point whose nearest anchors include movers
        takes the homography's motion if the nearest movers that move with the nearest one (one
        object) do not surround it, i.e. it lies outside their convex hull; inside it (a flat
        patch on the object) it keeps its neighbours' motion. Where a large object, not the
        background, holds most anchors, the border decides against the homography and nothing
        changes. ``motion`` and ``fitted`` are updated in place.
        """
        rows = np.flatnonzero(unseen & (count >= 1))
        for g in np.unique(group[rows]):
            h = homographies[g]
            if not np.isfinite(h).all():
                continue
            anchors = np.flatnonzero(anchor_mask[g])
            pos = ref64[g, anchors]
            explained, moving = self._against_scene(h, pos, pos + disp[g, anchors])
            lo, hi = ref64[g].min(axis=0), ref64[g].max(axis=0)
            margin = (hi - lo).min() / 8
            border = ((pos - lo).min(axis=1) < margin) | ((hi - pos).min(axis=1) < margin)
            if border.sum() < 4 or explained[border].mean() < 0.5:
                continue  # the homography is not the background's
            mover = np.zeros(anchor_mask.shape[1], bool)
            mover[anchors[moving]] = True
            r = rows[group[rows] == g]
            valid = np.arange(nn.shape[1])[None] < count[r, None]
            r = r[(valid & mover[nn[r]]).any(axis=1)]  # a mover among the nearest anchors
            if len(r) == 0:
                continue
            near, k = self._nearest(ref64[g][None], mover[None], np.zeros(len(r), np.intp), query[r])
            moves = disp[g][near]
            together = np.linalg.norm(moves - moves[:, :1], axis=2) <= self.independent_motion_px
            together &= np.arange(near.shape[1])[None] < k[:, None]
            here = ref64[g, query[r]]
            moved, ahead = _apply_homography(h, here)
            outside = ahead & ~_surrounded(here, ref64[g][near], together)
            motion[r[outside]] = (moved - here)[outside]
            fitted[r[outside]] = True

    # -- frame-0 reference patches ------------------------------------------------------------

    def _refine(self, img, tmpl: _Templates, init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Refine positions ``init`` in the float32 frame ``img`` against their templates.

        Returns the positions and their appearance score (:meth:`_matches`); an alignment is
        kept where it converged inside the clip, within ``refine_tolerance_px`` of its start.
        """
        pos = init.astype(np.float32)
        if len(pos) == 0:
            return pos, np.zeros(0, np.float32)
        if self.refine:
            height, width = img.shape
            aligned, converged = self._align(img, tmpl, pos)
            keep = converged & _inside(aligned, width, height)
            keep &= np.linalg.norm(aligned - pos, axis=1) <= self.refine_tolerance_px
            pos[keep] = aligned[keep]
        return pos, self._matches(img, tmpl, pos)

    def _templates(self, ref_img: np.ndarray, ref_pos: np.ndarray, affine: np.ndarray) -> _Templates:
        """Patches of ``ref_img`` around ``ref_pos``, resampled through ``affine`` (ref → cur)."""
        inv = np.linalg.inv(affine).astype(np.float32)  # current offset → reference offset
        ox, oy = self._offsets_margin
        sx = inv[:, 0, 0, None] * ox
        sx += ref_pos[:, 0, None]
        sx += inv[:, 0, 1, None] * oy
        sy = inv[:, 1, 0, None] * ox
        sy += ref_pos[:, 1, None]
        sy += inv[:, 1, 1, None] * oy
        m, win = len(ref_pos), self.win_size
        patch = _bilinear(ref_img, sx, sy).reshape(m, win + 2, win + 2)
        grads = np.empty((m, 2, win, win), np.float32)
        np.subtract(patch[:, 1:-1, 2:], patch[:, 1:-1, :-2], out=grads[:, 0])
        np.subtract(patch[:, 2:, 1:-1], patch[:, :-2, 1:-1], out=grads[:, 1])
        grads *= 0.5
        grads = grads.reshape(m, 2, -1)
        values = patch[:, 1:-1, 1:-1].reshape(m, -1)
        values -= (values @ self._weights)[:, None]
        w_gx, w_gy = grads[:, 0] * self._weights, grads[:, 1] * self._weights
        gxx, gxy, gyy = _row_dot(w_gx, grads[:, 0]), _row_dot(w_gx, grads[:, 1]), _row_dot(w_gy, grads[:, 1])
        min_eig = 0.5 * (gxx + gyy - np.sqrt((gxx - gyy) ** 2 + 4 * gxy**2))
        contrast = np.sqrt(_row_dot(values * self._weights, values))
        textured = (contrast >= self.min_contrast) & (min_eig >= self.min_texture)
        max_eig = gxx + gyy - min_eig
        cornered = textured & (min_eig >= self.min_corner_ratio * max_eig)
        angle = 0.5 * np.arctan2(2.0 * gxy, gxx - gyy)
        normal = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
        return _Templates(values, grads, contrast, textured, cornered, normal)

    def _sample(self, img: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(M, win²) patches of the float32 frame ``img`` centred on ``pos``, bilinear, border
        replicated."""
        ox, oy = self._offsets
        if len(pos) == 0:
            return np.zeros((0, ox.size), np.float32)
        if _EXACT_REMAP and len(pos) < _REMAP_ROWS:  # tracked points: within a few px of the clip
            return cv2.remap(img, ox + pos[:, :1], oy + pos[:, 1:], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        if _EXACT_REMAP:
            return _bilinear(img, ox + pos[:, :1], oy + pos[:, 1:])
        # All pixels of a patch share the sub-pixel fraction of its centre, so one gather of a
        # (win+1)² integer block per patch and a blend of its shifted views suffice.
        h, w = img.shape
        half = self.win_size // 2
        x = pos[:, 0].astype(np.float64) - half
        y = pos[:, 1].astype(np.float64) - half
        x0, y0 = np.floor(x), np.floor(y)
        fx = (x - x0).astype(np.float32)[:, None, None]
        fy = (y - y0).astype(np.float32)[:, None, None]
        steps = np.arange(self.win_size + 1)
        cols = np.clip(x0.astype(np.int64)[:, None] + steps, 0, w - 1)
        rows = np.clip(y0.astype(np.int64)[:, None] + steps, 0, h - 1)
        block = img[rows[:, :, None], cols[:, None, :]]  # (M, win+1, win+1)
        across = block[:, :, 1:] - block[:, :, :-1]
        across *= fx
        across += block[:, :, :-1]
        out = across[:, 1:] - across[:, :-1]
        out *= fy
        out += across[:, :-1]
        return out.reshape(len(pos), -1)

    def _align(self, img: np.ndarray, tmpl: _Templates, init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Robust translation-only Gauss–Newton (inverse compositional) of the templates in ``img``.

        All points at once; a point leaves the batch when its step falls below ``epsilon_px``
        (converged), or when it strays more than 1 px beyond ``refine_tolerance_px`` from its
        start (given up: :meth:`_refine` would keep it only if it came back).
        """
        pos = init.astype(np.float32)
        converged = np.zeros(len(pos), bool)
        active = np.flatnonzero(tmpl.textured)
        start = pos[active]
        cur = start.copy()
        gx, gy, values = tmpl.grads[active, 0], tmpl.grads[active, 1], tmpl.values[active]
        weights = self._weights
        s2 = np.float32(self.robust_scale**2)
        cauchy = weights * s2  # window × Cauchy weight: weights / (1 + r²/s²) = weights·s² / (s² + r²)
        reach, eps2 = (self.refine_tolerance_px + 1.0) ** 2, self.epsilon_px**2
        for _ in range(self.max_iterations):
            if len(active) == 0:
                break
            residual = self._sample(img, cur)
            residual -= (residual @ weights)[:, None]
            residual -= values
            w = residual * residual
            w += s2
            np.divide(cauchy, w, out=w)
            w_gx, w_gy = w * gx, w * gy
            gxx, gxy, gyy = _row_dot(w_gx, gx), _row_dot(w_gx, gy), _row_dot(w_gy, gy)
            bx, by = _row_dot(w_gx, residual), _row_dot(w_gy, residual)
            det = gxx * gyy
            det -= gxy * gxy
            np.maximum(det, 1e-9, out=det)
            step = np.empty_like(start)
            np.subtract(gyy * bx, gxy * by, out=step[:, 0])
            np.subtract(gxx * by, gxy * bx, out=step[:, 1])
            step /= det[:, None]
            norm2 = np.einsum("ij,ij->i", step, step)
            if norm2.max() > 1.0:  # at most 1 px a step
                step /= np.sqrt(np.maximum(norm2, 1.0))[:, None]
            cur -= step
            done = norm2 < eps2
            offset = cur - start
            stop = done | (np.einsum("ij,ij->i", offset, offset) > reach)
            if stop.any():
                converged[active[done]] = True
                pos[active[stop]] = cur[stop]
                going = ~stop
                active, start, cur = active[going], start[going], cur[going]
                gx, gy, values = gx[going], gy[going], values[going]
        pos[active] = cur
        return pos, converged

    def _appearance_match(self, img, tmpl: _Templates, pos) -> tuple[np.ndarray, np.ndarray]:
        """How well the surroundings of each point match its reference patch.

        Returns ``(inliers, ncc)``. A pixel is an inlier when its difference from the reference,
        less the median difference over the pixels closest to the point (a brightness offset),
        is within ``max(inlier_tolerance, inlier_tolerance_rel · contrast)`` grey levels;
        ``inliers`` is their fraction under Gaussian weights of ``occlusion_sigma_px`` centred on
        the point (so another surface crossing the edge of the window barely counts, an
        occluder over the point does), and ``ncc`` the normalised cross-correlation over those
        inliers (so a weak texture that "matches" anywhere within the tolerance does not pass).
        """
        patch = self._sample(img, pos)
        diff = patch - tmpl.values
        diff -= _median1(diff[:, self._central])[:, None]
        tol = np.maximum(self.inlier_tolerance, self.inlier_tolerance_rel * tmpl.contrast)[:, None]
        np.abs(diff, out=diff)
        w = np.less_equal(diff, tol, out=diff)  # 1.0 for inliers, 0.0 for the rest
        w *= self._occlusion_weights
        mass = w.sum(1)
        safe = np.maximum(mass, 1e-9)
        a = tmpl.values - (_row_dot(w, tmpl.values) / safe)[:, None]
        b = patch - (_row_dot(w, patch) / safe)[:, None]
        w_a, w_b = w * a, w * b
        ncc = _row_dot(w_a, b) / np.sqrt(np.maximum(_row_dot(w_a, a) * _row_dot(w_b, b), 1e-12))
        return mass, ncc

    def _matches(self, img: np.ndarray, tmpl: _Templates, pos: np.ndarray) -> np.ndarray:
        """Appearance score in [-1, 1]: the NCC over inliers, or −1 without enough inliers."""
        mass, ncc = self._appearance_match(img, tmpl, pos)
        return np.where(mass >= self.min_inlier_fraction, ncc, -1.0)


def _level_shift(table: np.ndarray, img: np.ndarray) -> float:
    """How far (grey levels) ``table`` moves the pixels of ``img`` (uint8), on average."""
    counts = np.bincount(img.ravel(), minlength=256)
    return float(counts @ np.abs(table.astype(np.int16) - np.arange(256)) / counts.sum())


def _normalised(weights: np.ndarray) -> np.ndarray:
    return (weights / weights.sum()).astype(np.float32)
