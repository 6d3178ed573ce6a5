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

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
from scipy.spatial import cKDTree

from ic_data.errors import MissingWeightsError

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

GRID_SIZE = 16
REPO_ENV = "IC_COTRACKER_REPO"
CHECKPOINT_ENV = "IC_COTRACKER_CHECKPOINT"


def grid_points(width: int = 384, height: int = 256, grid_size: int = GRID_SIZE) -> np.ndarray:
    """Query points at the centres of a ``grid_size × grid_size`` tiling of the frame.

    Cell ``(i, j)`` covers ``[-0.5 + j·W/g, -0.5 + (j+1)·W/g]`` horizontally (pixel edges, in the
    pixel-centre convention), so its centre is ``x = (j + 0.5)·W/g − 0.5``; likewise for y. For a
    384×256 clip and g = 16 that is x = 11.5, 35.5, …, 371.5 and y = 7.5, 23.5, …, 247.5: the
    grid is symmetric about the image centre and every point is half a cell from the border.
    Returns float32 ``(g², 2)`` in row-major order (x varies fastest).
    """
    if grid_size < 1 or width < 1 or height < 1:
        raise ValueError(f"grid_points needs positive sizes, got {width}×{height}, grid {grid_size}")
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


# --- Lucas–Kanade ------------------------------------------------------------------------------


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample a float32 (H, W) image at float positions, replicating the border.

    Written out rather than ``cv2.remap`` because remap quantises positions to 1/32 px, which
    is coarser than the sub-pixel steps the template alignment takes.
    """
    h, w = img.shape
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(x.astype(np.int32), w - 2)
    y0 = np.minimum(y.astype(np.int32), h - 2)
    fx = (x - x0).astype(np.float32)
    fy = (y - y0).astype(np.float32)
    flat = img.ravel()
    i = y0 * w + x0
    top = flat[i] + (flat[i + 1] - flat[i]) * fx
    bottom = flat[i + w] + (flat[i + w + 1] - flat[i + w]) * fx
    return top + (bottom - top) * fy


@dataclass
class _Templates:
    """Reference patches warped to how they should look in the current frame."""

    values: np.ndarray  # (M, P) intensities less their window-weighted mean, P = win²
    grad_x: np.ndarray  # (M, P)
    grad_y: np.ndarray  # (M, P)
    contrast: np.ndarray  # (M,) window-weighted standard deviation of ``values``
    textured: np.ndarray  # (M,) bool: contrast, and gradients in both directions


@dataclass
class LKTracker:
    """Pyramidal Lucas–Kanade with forward–backward checks: the offline tracking backend.

    For frame ``t`` and the points visible at ``t − 1``:

    1. *Chained step.* ``cv2.calcOpticalFlowPyrLK`` from frame ``t − 1`` to ``t`` and back, on
       grayscale frames. A point stays a candidate only if both solves converge, the round
       trip closes within ``fb_threshold_px`` and the point is inside the clip.
    2. *Refinement against frame 0.* Chained LK drifts, and under zoom in a consistent
       direction (a translation-only window locks onto its strongest texture, which the zoom
       moves relative to the point): ≈0.5 px median and 1.5 px at frame 31 on a 1.006/frame
       zoom over real footage. So each point's frame-0 patch is warped by the local affine
       motion of its ``neighbours`` nearest tracks (frame 0 → t) and aligned to frame ``t`` by
       Gauss–Newton on the translation, started at the chained estimate, with a Gaussian window
       (``window_sigma_px``) and Cauchy weights (``robust_scale``) that discount pixels of
       another surface crossing the window. The result replaces the chained estimate when it
       converges within ``refine_tolerance_px`` of it. Measured alternatives that did not help
       on zooms: LK refinement against the unwarped frame-0 patch (``OPTFLOW_USE_INITIAL_FLOW``)
       or against a keyframe ≤ 8 frames old.
    3. *Appearance check.* The warped frame-0 patch must still describe the point: at least
       ``min_inlier_fraction`` of the pixels around it (Gaussian weights of
       ``occlusion_sigma_px``) match it up to a brightness offset, and their normalised
       cross-correlation reaches ``min_ncc``. This catches what the forward–backward check
       cannot: an occluder sliding over a point, whose texture LK follows in both directions.
       Points whose frame-0 patch has too little texture to be checked (``min_contrast`` grey
       levels, or gradients in only one direction) are reported invisible: their positions
       are predictions, not measurements.

    Invisible points move with their ``neighbours`` nearest visible points — nearest in position
    and in recent motion (``motion_weight``), so a background point next to a moving object
    follows the background — from the frame where they were last seen: an affine fit of the
    neighbours' displacements where it explains them, their median otherwise. A point lost
    after a steady motion relative to its neighbourhood (a point on a moving object) keeps that
    relative velocity. Each frame, hidden points are searched for near their prediction (LK
    from their last visible appearance, and the prediction itself, each refined against frame
    0) and become visible again when the appearance check passes.

    Deterministic: a fixed computation on the frames (OpenCV's LK solves each point on its
    own); nothing is random. ``version`` changes whenever the algorithm or its defaults do.
    """

    win_size: int = 21
    max_level: int = 3
    fb_threshold_px: float = 1.0
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
    neighbours: int = 8
    max_affine_residual_px: float = 1.0
    reacquire_radius_px: float = 6.0
    steady_motion_px: float = 0.5
    history_frames: int = 4
    motion_weight: float = 8.0
    max_iterations: int = 20
    epsilon_px: float = 0.01

    name: str = "lk"
    version: str = "1"

    def __post_init__(self) -> None:
        if self.win_size < 5 or self.win_size % 2 == 0:
            raise ValueError(f"win_size must be odd and ≥ 5, got {self.win_size}")
        half = self.win_size // 2
        ox, oy = np.meshgrid(np.arange(-half - 1, half + 2), np.arange(-half - 1, half + 2))
        self._offsets_margin = np.stack([ox, oy]).astype(np.float32)  # (2, win+2, win+2)
        self._offsets = self._offsets_margin[:, 1:-1, 1:-1].reshape(2, -1)  # (2, win²)
        r2 = (self._offsets**2).sum(0)
        self._weights = _normalised(np.exp(-r2 / (2.0 * self.window_sigma_px**2)))
        self._occlusion_weights = _normalised(np.exp(-r2 / (2.0 * self.occlusion_sigma_px**2)))
        self._central = r2 <= max(1.0, self.occlusion_sigma_px) ** 2

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
        grays_f = [g.astype(np.float32) for g in grays]
        last_t = np.zeros(n, np.int64)  # last frame where each point was visible
        # Points without texture in frame 0 can never be verified: they are only predicted.
        trackable = self._templates(grays_f[0], points, np.tile(np.eye(2), (n, 1, 1))).textured
        relative_velocity = np.zeros((n, 2), np.float32)  # of lost points, px/frame

        for t in range(1, num_frames):
            cur = tracks[t - 1].copy()
            vis = np.zeros(n, bool)

            idx = np.flatnonzero(visible[t - 1])
            moved, ok = self._lk_checked(grays[t - 1], grays[t], cur[idx])
            cur[idx] = moved
            vis[idx] = ok & _inside(moved, width, height)

            idx = np.flatnonzero(vis)
            cur[idx], score, textured = self._match_reference(grays_f, t, points, cur, vis, idx, cur[idx])
            vis[idx] = textured & (score >= self.min_ncc)

            hidden = np.flatnonzero(~vis)
            if t >= 3:
                # A point lost after two steps of the same motion relative to its neighbourhood
                # (a point on a moving object) keeps that relative motion while hidden. A point
                # whose last step differed (pulled by an approaching occluder) does not.
                lost = hidden[visible[t - 1, hidden] & visible[t - 2, hidden] & visible[t - 3, hidden]]
                if len(lost):
                    last = self._relative_step(tracks, visible, t - 2, lost)
                    before = self._relative_step(tracks, visible, t - 3, lost)
                    steady = np.linalg.norm(last - before, axis=1) <= self.steady_motion_px
                    relative_velocity[lost] = np.where(steady[:, None], 0.5 * (last + before), 0.0)
            # Predicted from the frame where each was last seen in one step, not by chaining
            # per-frame steps, so predictions do not drift.
            for k in np.unique(last_t[hidden]):
                group = hidden[last_t[hidden] == k]
                past = max(0, k - self.history_frames)
                anchors = vis & visible[k] & visible[past]
                motion = self._neighbour_motion(tracks[k], cur, anchors, group, tracks[k] - tracks[past])
                cur[group] = tracks[k, group] + motion + relative_velocity[group] * (t - k)

            searchable = hidden[trackable[hidden]]
            vis[self._reacquire(grays, grays_f, tracks, points, last_t, cur, vis, t, searchable)] = True

            tracks[t] = cur
            visible[t] = vis
            last_t[vis] = t
        return tracks, visible

    def _relative_step(self, tracks, visible, k, sel) -> np.ndarray:
        """Displacement of points ``sel`` from frame k to k + 1, less their neighbourhood's."""
        past = max(0, k - self.history_frames)
        anchors = visible[k] & visible[k + 1] & visible[past]
        own = tracks[k + 1, sel] - tracks[k, sel]
        return own - self._neighbour_motion(tracks[k], tracks[k + 1], anchors, sel, tracks[k] - tracks[past])

    def _reacquire(self, grays, grays_f, tracks, points, last_t, cur, vis, t, hidden) -> np.ndarray:
        """Indices of hidden points found again near their prediction (``cur`` updated in place)."""
        height, width = grays[0].shape
        candidates = hidden[_inside(cur[hidden], width, height)]
        if len(candidates) == 0:
            return candidates
        predicted = cur[candidates].copy()
        searched = predicted.copy()
        for k in np.unique(last_t[candidates]):
            group = np.flatnonzero(last_t[candidates] == k)
            idx = candidates[group]
            found, ok = self._lk_checked(grays[k], grays[t], tracks[k, idx], predicted[group])
            ok &= np.linalg.norm(found - predicted[group], axis=1) <= self.reacquire_radius_px
            searched[group[ok]] = found[ok]
        # Two starts: where LK went, and the prediction itself (near a motion boundary LK
        # follows the dominant surface, which need not be the point's).
        pos, score, textured = self._match_reference(grays_f, t, points, cur, vis, candidates, searched)
        pos_p, score_p, _ = self._match_reference(grays_f, t, points, cur, vis, candidates, predicted)
        better = score_p > score
        pos[better], score[better] = pos_p[better], score_p[better]
        back = textured & (score >= self.min_ncc) & _inside(pos, width, height)
        cur[candidates[back]] = pos[back]
        return candidates[back]

    # -- pyramidal LK (OpenCV) -------------------------------------------------------------

    def _lk(self, img_a, img_b, pts_a: np.ndarray, init_b: np.ndarray | None = None):
        # The Python binding cannot take prebuilt pyramids, so every call builds its own.
        pts_a = np.ascontiguousarray(pts_a, np.float32).reshape(-1, 1, 2)
        flags = 0
        if init_b is not None:
            init_b = np.ascontiguousarray(init_b, np.float32).reshape(-1, 1, 2).copy()
            flags = cv2.OPTFLOW_USE_INITIAL_FLOW
        pts_b, status, _ = cv2.calcOpticalFlowPyrLK(
            img_a, img_b, pts_a, init_b,
            winSize=(self.win_size, self.win_size), maxLevel=self.max_level, flags=flags,
            criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, self.max_iterations, 0.01),
        )
        pts_b = pts_b.reshape(-1, 2)
        return pts_b, status.reshape(-1).astype(bool) & np.isfinite(pts_b).all(axis=1)

    def _lk_checked(self, img_a, img_b, pts_a, init_b=None):
        """LK a→b and back: positions in b, and whether both converged and the round trip closed."""
        if len(pts_a) == 0:
            return np.zeros((0, 2), np.float32), np.zeros(0, bool)
        pts_b, ok_forward = self._lk(img_a, img_b, pts_a, init_b)
        back, ok_backward = self._lk(img_b, img_a, pts_b, pts_a)
        closed = np.linalg.norm(back - pts_a, axis=1) <= self.fb_threshold_px
        return pts_b, ok_forward & ok_backward & closed

    # -- neighbourhood motion ---------------------------------------------------------------

    def _nearest(self, ref_pos, anchor_mask, query, history=None) -> np.ndarray | None:
        """(Q, k) indices of each query point's nearest anchors, or None when there are none.

        Nearest in position, and with ``history`` (N, 2) — each point's recent displacement — also
        in motion (``motion_weight`` px of distance per px of motion difference): a point next to
        a moving object takes its neighbours from its own surface.
        """
        anchors = np.flatnonzero(anchor_mask)
        if len(anchors) == 0 or len(query) == 0:
            return None
        k = min(self.neighbours, len(anchors))
        features = ref_pos
        if history is not None:
            features = np.concatenate([ref_pos, self.motion_weight * history], axis=1)
        _, nn = cKDTree(features[anchors]).query(features[query], k=k)
        return anchors[np.asarray(nn).reshape(len(query), k)]

    def _local_affine(self, ref_pos, cur_pos, anchor_mask, query) -> np.ndarray:
        """(Q, 2, 2) linear part of the motion ref → cur around each query point.

        Least squares over the nearest anchors; where the fit is ill-posed or does not explain
        them (a motion boundary, too few anchors), the identity.
        """
        out = np.tile(np.eye(2), (len(query), 1, 1))
        nn = self._nearest(ref_pos, anchor_mask, query)
        if nn is None or nn.shape[1] < 3:
            return out
        p = ref_pos[nn].astype(np.float64)
        q = cur_pos[nn].astype(np.float64)
        p -= p.mean(axis=1, keepdims=True)
        q -= q.mean(axis=1, keepdims=True)
        ptp = np.einsum("nki,nkj->nij", p, p)
        good = np.linalg.det(ptp) > 1e-3 * np.einsum("nii->n", ptp) ** 2  # spread in 2-D
        ptp[~good] = np.eye(2)
        a = np.einsum("nki,nkj->nij", q, p) @ np.linalg.inv(ptp)
        rms = np.sqrt(((q - p @ a.transpose(0, 2, 1)) ** 2).sum(axis=2).mean(axis=1))
        det = np.linalg.det(a)
        good &= (rms <= self.max_affine_residual_px) & (det > 0.5) & (det < 2.0)
        out[good] = a[good]
        return out

    def _neighbour_motion(self, ref_pos, cur_pos, anchor_mask, query, history=None) -> np.ndarray:
        """Displacement ref → cur at each query point, from its nearest anchors' displacements.

        An affine fit where it explains them (smooth camera motion: zoom, rotation), their
        median otherwise (robust when the neighbours straddle two motions).
        """
        nn = self._nearest(ref_pos, anchor_mask, query, history)
        if nn is None:
            return np.zeros((len(query), 2), np.float32)
        disp = (cur_pos[nn] - ref_pos[nn]).astype(np.float64)  # (Q, k, 2)
        motion = np.median(disp, axis=1)
        if nn.shape[1] >= 4:
            p = ref_pos[nn].astype(np.float64)
            centre = p.mean(axis=1, keepdims=True)
            design = np.concatenate([p - centre, np.ones_like(p[..., :1])], axis=2)  # (Q, k, 3)
            gram = np.einsum("qki,qkj->qij", design, design)
            ok = np.linalg.det(gram[:, :2, :2]) > 1e-3 * np.einsum("qii->q", gram[:, :2, :2]) ** 2
            gram[~ok] = np.eye(3)
            coef = np.linalg.solve(gram, np.einsum("qki,qkj->qij", design, disp))  # (Q, 3, 2)
            rms = np.sqrt(((design @ coef - disp) ** 2).sum(axis=2).mean(axis=1))
            ok &= rms <= 0.5 * self.max_affine_residual_px
            here = np.concatenate([ref_pos[query] - centre[:, 0], np.ones((len(query), 1))], axis=1)
            motion[ok] = np.einsum("qi,qij->qj", here, coef)[ok]
        return motion.astype(np.float32)

    # -- frame-0 reference patches ------------------------------------------------------------

    def _match_reference(self, grays_f, t, points, cur, anchor_mask, sel, init):
        """Refine points ``sel`` in frame t (from ``init``) against their frame-0 patches.

        Returns the positions, their appearance score (:meth:`_matches`) and whether each
        reference patch has the texture to be aligned and checked at all.
        """
        img = grays_f[t]
        height, width = img.shape
        pos = init.astype(np.float32).copy()
        if len(sel) == 0:
            return pos, np.zeros(0, np.float32), np.zeros(0, bool)
        affine = self._local_affine(points, cur, anchor_mask, sel)
        tmpl = self._templates(grays_f[0], points[sel], affine)
        if self.refine:
            aligned, converged = self._align(img, tmpl, pos)
            keep = converged & _inside(aligned, width, height)
            keep &= np.linalg.norm(aligned - pos, axis=1) <= self.refine_tolerance_px
            pos[keep] = aligned[keep]
        return pos, self._matches(img, tmpl, pos), tmpl.textured

    def _templates(self, ref_img: np.ndarray, ref_pos: np.ndarray, affine: np.ndarray) -> _Templates:
        """Patches of ``ref_img`` around ``ref_pos``, resampled through ``affine`` (ref → cur)."""
        inv = np.linalg.inv(affine).astype(np.float32)  # current offset → reference offset
        ox, oy = self._offsets_margin
        sx = ref_pos[:, 0, None, None] + inv[:, 0, 0, None, None] * ox + inv[:, 0, 1, None, None] * oy
        sy = ref_pos[:, 1, None, None] + inv[:, 1, 0, None, None] * ox + inv[:, 1, 1, None, None] * oy
        patch = _bilinear(ref_img, sx, sy)
        m = len(ref_pos)
        grad_x = (0.5 * (patch[:, 1:-1, 2:] - patch[:, 1:-1, :-2])).reshape(m, -1)
        grad_y = (0.5 * (patch[:, 2:, 1:-1] - patch[:, :-2, 1:-1])).reshape(m, -1)
        values = self._centre(patch[:, 1:-1, 1:-1].reshape(m, -1))
        w = self._weights
        gxx = (w * grad_x * grad_x).sum(1)
        gxy = (w * grad_x * grad_y).sum(1)
        gyy = (w * grad_y * grad_y).sum(1)
        min_eig = 0.5 * (gxx + gyy - np.sqrt((gxx - gyy) ** 2 + 4 * gxy**2))
        contrast = np.sqrt((w * values * values).sum(1))
        textured = (contrast >= self.min_contrast) & (min_eig >= self.min_texture)
        return _Templates(values, grad_x, grad_y, contrast, textured)

    def _centre(self, patches: np.ndarray) -> np.ndarray:
        return patches - (patches * self._weights).sum(axis=1, keepdims=True)

    def _sample(self, img: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(M, win²) patches of ``img`` centred on ``pos``, bilinear, border replicated.

        All pixels of a patch share the sub-pixel fraction of its centre, so one gather of a
        (win+1)² integer block per patch and a blend of its four shifted views suffice.
        """
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
        top = block[:, :-1, :-1] + (block[:, :-1, 1:] - block[:, :-1, :-1]) * fx
        bottom = block[:, 1:, :-1] + (block[:, 1:, 1:] - block[:, 1:, :-1]) * fx
        return (top + (bottom - top) * fy).reshape(len(pos), -1)

    def _align(self, img: np.ndarray, tmpl: _Templates, init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Robust translation-only Gauss–Newton (inverse compositional) of the templates in ``img``."""
        pos = init.astype(np.float32).copy()
        converged = np.zeros(len(pos), bool)
        active = np.flatnonzero(tmpl.textured)
        for _ in range(self.max_iterations):
            if len(active) == 0:
                break
            gx, gy = tmpl.grad_x[active], tmpl.grad_y[active]
            residual = self._centre(self._sample(img, pos[active])) - tmpl.values[active]
            w = self._weights / (1.0 + (residual / self.robust_scale) ** 2)
            gxx, gxy, gyy = (w * gx * gx).sum(1), (w * gx * gy).sum(1), (w * gy * gy).sum(1)
            bx, by = (w * gx * residual).sum(1), (w * gy * residual).sum(1)
            det = np.maximum(gxx * gyy - gxy * gxy, 1e-9)
            step = np.stack([gyy * bx - gxy * by, gxx * by - gxy * bx], axis=1) / det[:, None]
            norm = np.linalg.norm(step, axis=1)
            step *= np.minimum(1.0, 1.0 / np.maximum(norm, 1e-12))[:, None]  # at most 1 px a step
            pos[active] -= step
            done = norm < self.epsilon_px
            converged[active[done]] = True
            active = active[~done]
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
        diff -= np.median(diff[:, self._central], axis=1, keepdims=True)
        tol = np.maximum(self.inlier_tolerance, self.inlier_tolerance_rel * tmpl.contrast)[:, None]
        w = self._occlusion_weights * (np.abs(diff) <= tol)
        mass = w.sum(1)
        safe = np.maximum(mass, 1e-9)[:, None]
        a = tmpl.values - (w * tmpl.values).sum(1, keepdims=True) / safe
        b = patch - (w * patch).sum(1, keepdims=True) / safe
        ncc = (w * a * b).sum(1) / np.sqrt(np.maximum((w * a * a).sum(1) * (w * b * b).sum(1), 1e-12))
        return mass, ncc

    def _matches(self, img: np.ndarray, tmpl: _Templates, pos: np.ndarray) -> np.ndarray:
        """Appearance score in [-1, 1]: the NCC over inliers, or −1 without enough inliers."""
        mass, ncc = self._appearance_match(img, tmpl, pos)
        return np.where(mass >= self.min_inlier_fraction, ncc, -1.0)


def _normalised(weights: np.ndarray) -> np.ndarray:
    return (weights / weights.sum()).astype(np.float32)


# --- CoTracker ---------------------------------------------------------------------------------

# hubconf entry point → the checkpoint file its URL names (torch.hub caches it under that name).
# Only the offline predictors: they take the whole clip in one call.
_COTRACKER_CHECKPOINTS = {
    "cotracker3_offline": "scaled_offline.pth",
    "cotracker2v1": "cotracker2v1.pth",
    "cotracker2": "cotracker2.pth",
}
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
        model: str = "cotracker3_offline",
    ):
        if model not in _COTRACKER_CHECKPOINTS:
            supported = sorted(_COTRACKER_CHECKPOINTS)
            raise ValueError(f"unsupported CoTracker model {model!r}; offline models: {supported}")
        import torch  # deferred: the LK backend and the rest of ic_data do not need torch

        repo = Path(_cotracker_repo(repo_dir))
        weights = _cotracker_checkpoint(checkpoint, model)
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


def _cotracker_repo(repo_dir: str | None) -> str:
    repo = repo_dir or os.environ.get(REPO_ENV)
    if not repo:
        raise MissingWeightsError(
            f"CoTracker needs a local clone of facebookresearch/co-tracker: set {REPO_ENV} "
            f"(or pass repo_dir), and its weights via {CHECKPOINT_ENV} or the torch.hub cache; "
            "or use the offline 'lk' tracker"
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


# --- factory -----------------------------------------------------------------------------------

_TRACKERS = {"lk": LKTracker, "cotracker": CoTrackerTracker}


def make_tracker(name: str, **kwargs) -> Tracker:
    """Build a tracker by name: ``"lk"`` (offline) or ``"cotracker"`` (needs local weights)."""
    try:
        cls = _TRACKERS[name]
    except KeyError:
        raise ValueError(f"unknown tracker {name!r}; choose from {sorted(_TRACKERS)}") from None
    return cls(**kwargs)
