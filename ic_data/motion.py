"""Motion scores and the dataset-wide low-motion filter (paper §2.2, "Motion Estimation and Filtering").

The paper computes optical flow between adjacent frames of the sampled 32-frame clip, takes the
Frobenius norm of each flow field as a motion score, and drops the 25% of videos with the
lowest score. This module does the same on frames already in memory (uint8 ``(T, H, W, 3)`` RGB
at the resized size, e.g. 455×256); it never opens a file.

Score definition. For each adjacent pair the flow field ``F`` (H×W×2, input pixels) gives

    score_pair = ||F||_F / sqrt(H·W) = sqrt(mean over pixels of (u² + v²))

i.e. the raw Frobenius norm normalised by the square root of the pixel count. The clip's score
is the mean of ``score_pair`` over the ``T − 1`` pairs. The normalisation makes the score the
root-mean-square flow magnitude in pixels per frame, so it does not depend on the resolution
the flow was computed at: a clip panning at 3 px/frame scores ≈ 3 whatever its size, and
thresholds transfer between datasets. (The paper's raw norm grows with the pixel count; for a
fixed clip size the two orders agree, so the filter keeps the same videos.)

Flow backends (:class:`FlowBackend`):

* :class:`DISFlow` — OpenCV's DIS optical flow on grayscale frames; CPU, no weights, the
  offline default. Each pair's grey levels are matched first (:func:`match_levels`): a
  flicker of the light is no motion. RAFT's input is not matched: it was trained with the
  brightness of a pair's frames jittered apart; without its weights here, that is not measured.
  Its RMS is taken over the pixels whose flow can be trusted (:meth:`DISFlow.trusted_flows`):
  where the picture does not fix the motion and the backward flow contradicts it, DIS has
  filled in a guess. RAFT's pixels are all counted (without its weights here, how it fills in
  such regions is not measured).
* :class:`RAFTFlow` — torchvision's RAFT (the paper's estimator), weights from a local file,
  ``IC_RAFT_WEIGHTS`` or torchvision's own cache; never downloads.

Both may estimate flow on frames downscaled by ``analysis_scale`` for speed; flows are always
returned at the input size and in input-pixel units (vectors divided by the per-axis scale, the
field bilinearly upsampled), so scores are comparable across scales and backends.

The filter (:func:`motion_filter`) needs every score of the dataset before it can drop anything:
the threshold is a percentile of all scores, not a per-clip decision.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable
from urllib.parse import urlparse

import cv2
import numpy as np

from ic_data.errors import MissingWeightsError

__all__ = [
    "FlowBackend",
    "DISFlow",
    "match_levels",
    "levels_table",
    "fixes_motion",
    "RAFTFlow",
    "make_flow_backend",
    "flow_rms_px",
    "motion_score",
    "motion_threshold",
    "motion_filter",
    "torchvision_raft_cache_path",
    "find_raft_weights",
    "RAFT_WEIGHTS_ENV",
]

RAFT_WEIGHTS_ENV = "IC_RAFT_WEIGHTS"


# --- backends ----------------------------------------------------------------------------------


@runtime_checkable
class FlowBackend(Protocol):
    """An optical-flow estimator. ``name`` and ``version`` are recorded in every output.

    ``flow`` returns the forward flow from ``prev`` to ``nxt``: (H, W, 2) float32, (dx, dy) in
    pixels of the input frames, such that ``prev[y, x]`` moves to ``nxt[y + dy, x + dx]``.
    """

    name: str
    version: str

    def flow(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray: ...

    def flows(self, frames: np.ndarray) -> np.ndarray:
        """Flows of all adjacent pairs of ``frames`` (T, H, W, 3): (T − 1, H, W, 2) float32."""
        frames = _check_frames(frames)
        out = np.empty((len(frames) - 1, *frames.shape[1:3], 2), np.float32)
        for i in range(len(frames) - 1):
            out[i] = self.flow(frames[i], frames[i + 1])
        return out

    def pair_rms(self, frames: np.ndarray, starts: Sequence[int]) -> np.ndarray:
        """RMS flow magnitude (pixels of ``frames``) of the pairs ``(frames[i], frames[i + 1])``
        for ``i`` in ``starts``: (len(starts),) float64, i.e. :func:`flow_rms_px` of their flows."""
        if len(starts) == len(frames) - 1:  # every pair: ``flows`` may batch them
            return flow_rms_px(self.flows(frames))
        return np.array([flow_rms_px(self.flow(frames[i], frames[i + 1])[None])[0] for i in starts])


def _check_frames(frames: np.ndarray, min_frames: int = 2) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {arr.dtype}")
    if arr.shape[0] < min_frames:
        raise ValueError(f"need at least {min_frames} frames for optical flow, got {arr.shape[0]}")
    return arr


def _check_scale(analysis_scale: float) -> float:
    scale = float(analysis_scale)
    if not (0.0 < scale <= 1.0):
        raise ValueError(f"analysis_scale must be in (0, 1], got {analysis_scale}")
    return scale


def _analysis_size(height: int, width: int, scale: float, min_side: int = 1) -> tuple[int, int]:
    """(h, w) of the analysed frames: ``scale`` × input, each side at least ``min_side`` pixels."""
    h = max(min_side, int(round(height * scale)))
    w = max(min_side, int(round(width * scale)))
    return h, w


def match_levels(frame: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``frame`` (uint8 grey) with its levels mapped so that their distribution is ``reference``'s.

    Histogram matching: each level of ``frame`` goes to the level at the same place (mid-rank)
    in ``reference``'s distribution, so any monotone change of brightness between the two (a
    gain, an offset, a gamma, and the clipping they bring at white) is undone, while the order of
    levels, which is what the flow reads, is kept. Adjacent frames differ by what motion brings
    in, so their distributions differ little: on real pictures, pans of 0.25-30 px a frame and a
    bright object crossing a dark scene score within 6 % of what they did unmatched; a pan of 60
    px a frame (an eighth of the width), whose frames share less, up to 21 % lower, still far
    above any low-motion threshold.
    """
    return cv2.LUT(frame, levels_table(frame, reference))


def levels_table(frame: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The (256,) uint8 lookup table :func:`match_levels` applies to ``frame``."""
    counts_f = np.bincount(frame.ravel(), minlength=256)
    counts_r = np.bincount(reference.ravel(), minlength=256)
    mid_f = (np.cumsum(counts_f) - counts_f / 2) / frame.size
    mid_r = (np.cumsum(counts_r) - counts_r / 2) / reference.size
    present = counts_r > 0
    table = np.interp(mid_f, mid_r[present], np.flatnonzero(present))
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


#: The forward-backward check of :meth:`DISFlow.trusted_flows`: the mismatch allowed, in
#: input pixels, and as a share of the squared magnitudes; and the share of a pair's pixels
#: below which the pair is counted whole.
CONFIRM_ABS_PX = 0.5
CONFIRM_REL = 0.01
MIN_TRUSTED = 0.1
#: :func:`fixes_motion`: the RMS grey-level gradient (levels a pixel) a neighbourhood needs in
#: its weakest direction for its picture to fix the motion both ways.
MIN_GRADIENT = 4.0


def fixes_motion(gray: np.ndarray, window: int) -> np.ndarray:
    """Where the picture ``gray`` (uint8) fixes motion in every direction: (H, W) bool.

    The structure tensor (the mean outer product of the grey-level gradient over a
    ``window``-pixel square) has both eigenvalues at least ``MIN_GRADIENT²``: the picture
    changes by ``MIN_GRADIENT`` levels a pixel or more whichever way it moves. A flat
    neighbourhood, or one of edges in a single direction (blinds, a railing, the streaks of
    motion blur), fixes at most the motion across them.
    """
    g = gray.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8  # levels a pixel
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8
    size = (int(window), int(window))
    xx = cv2.blur(gx * gx, size)
    xy = cv2.blur(gx * gy, size)
    yy = cv2.blur(gy * gy, size)
    smaller = (xx + yy) / 2 - np.sqrt(((xx - yy) / 2) ** 2 + xy**2)
    return smaller >= MIN_GRADIENT**2


_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DISFlow(FlowBackend):
    """OpenCV Dense Inverse Search optical flow (Kroeger et al., 2016) on grayscale frames.

    ``analysis_scale`` (default 0.5) downscales frames (area interpolation) before estimating
    flow; at the 256-pixel curation size that leaves 128 rows, plenty for a global motion score.
    Flow vectors are converted back to input pixels.

    ``finest_scale`` is DIS's finest pyramid level (0 = the analysed frame itself). The presets
    stop early (medium at 1/2, fast at 1/4 of the frame they are given) and upsample; on top of
    ``analysis_scale`` that overestimates sub-pixel motion (+16% at 0.5 px/frame, measured on
    synthetic pans, vs +7% with the default 0), exactly where the low-motion threshold lies.
    The default 0 therefore refines down to the analysed resolution, so ``analysis_scale`` alone
    sets the accuracy/speed trade-off; ``None`` keeps the preset's level (2–3× faster).
    OpenCV runs one DIS call on one core: parallelise across videos, not inside a clip.

    Each pair's second frame has its grey levels matched to the first's (:func:`match_levels`)
    before the flow: DIS assumes a point keeps its brightness, so a still shot whose exposure or
    lighting flickers scored as motion (a gain of ±15 % a frame on still real footage: 0.37–1.5
    px/frame, as much as a pan of 1 px/frame; after matching 0.16–0.46). A change of brightness
    is no motion of camera or object, and the filter is there to drop clips without either.

    The score counts only the pixels whose flow it can trust (:meth:`trusted_flows`;
    ``trust=False`` counts every pixel, as :meth:`flows` returns them). Where the picture holds
    edges of a single direction (blinds, a railing, the streaks of motion blur) it fixes only
    the motion across them, and DIS fills in the motion along them as it may: up to 34 px a
    frame on a pan of 0.75. Slow pans of real pictures with such regions scored up to 4.2
    times their speed (pans of 0.25-6 px a frame, across and down, over 9 real pictures: mean
    error 14 %); counting only trusted pixels, at most 1.35 times (mean 2.5 %). Zooms, rolls,
    fast pans and moving objects on those pictures come closer to their true RMS flow as well
    (mean error 4.9 % → 3.4 %; objects at worst 1.45 → 1.21 times, as DIS spreads their motion
    past their edges). It costs a second flow per pair (scoring a clip about twice as long).
    """

    name = "dis"

    def __init__(self, preset: str = "medium", analysis_scale: float = 0.5, finest_scale: int | None = 0,
                 trust: bool = True):
        if preset not in _DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose from {sorted(_DIS_PRESETS)}")
        self.preset = preset
        self.analysis_scale = _check_scale(analysis_scale)
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
        if finest_scale is not None:
            if finest_scale < 0:
                raise ValueError(f"finest_scale must be >= 0, got {finest_scale}")
            self._dis.setFinestScale(int(finest_scale))
        self.finest_scale = int(self._dis.getFinestScale())
        if not isinstance(trust, (bool, np.bool_)):
            raise ValueError(f"trust must be True or False, got {trust!r}")
        self.trust = bool(trust)
        self.version = (
            f"opencv-{cv2.__version__} preset={preset} finest_scale={self.finest_scale} "
            f"analysis_scale={self.analysis_scale:g} levels=matched"
            + (f" trusted=fb{CONFIRM_ABS_PX:g}px+{CONFIRM_REL:g},grad{MIN_GRADIENT:g}" if self.trust else "")
        )

    def __repr__(self) -> str:
        return (
            f"DISFlow(preset={self.preset!r}, analysis_scale={self.analysis_scale:g}, "
            f"finest_scale={self.finest_scale}, trust={self.trust})"
        )

    def _gray(self, frame: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        if gray.shape != size_hw:
            gray = cv2.resize(gray, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)
        return gray

    def _to_input_px(self, flow: np.ndarray, height: int, width: int) -> np.ndarray:
        h, w = flow.shape[:2]
        if (h, w) == (height, width):
            return flow.astype(np.float32, copy=False)
        flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= width / w
        flow[..., 1] *= height / h
        return flow.astype(np.float32, copy=False)

    def flow(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return self.flows(np.stack([prev, nxt]))[0]

    def _forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """DIS flow from grey ``a`` to grey ``b`` (analysed pixels), ``b``'s levels matched to ``a``'s."""
        return self._dis.calc(a, match_levels(b, a), None)

    def _pair_grays(self, frames: np.ndarray, starts: Sequence[int]) -> tuple[dict, np.ndarray]:
        """The analysed greys of the frames the pairs at ``starts`` use, each converted once also
        where consecutive pairs share one, and the per-axis factor from analysed to input pixels."""
        _, height, width, _ = frames.shape
        h, w = _analysis_size(height, width, self.analysis_scale)
        grays = {i: self._gray(frames[i], (h, w)) for i in sorted({*starts, *(i + 1 for i in starts)})}
        return grays, np.array([width / w, height / h], np.float32)

    def flows(self, frames: np.ndarray) -> np.ndarray:
        frames = _check_frames(frames)
        _, height, width, _ = frames.shape
        grays, _ = self._pair_grays(frames, range(len(frames) - 1))
        out = np.empty((len(frames) - 1, height, width, 2), np.float32)
        for i in range(len(frames) - 1):
            out[i] = self._to_input_px(self._forward(grays[i], grays[i + 1]), height, width)
        return out

    def trusted_flows(self, frames: np.ndarray, starts: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The forward flows of the pairs ``(frames[i], frames[i + 1])``, ``i`` in ``starts``
        (default: every pair), at the analysed size but in input pixels, and which of their
        pixels to trust: ``((P, h, w, 2) float32, (P, h, w) bool)``.

        A pixel's flow is trusted where the first frame's picture fixes it (:func:`fixes_motion`)
        or the backward flow confirms it. Confirmed: the backward flow ``b`` at the point the
        forward flow ``f`` moves it to brings it back, ``|f + b|² ≤ CONFIRM_REL · (|f|² + |b|²)
        + CONFIRM_ABS_PX²`` (the check of Sundaram et al., 2010). Where the picture holds no
        texture, or edges of one direction only, DIS fills in the motion as it may, and the two
        directions disagree; where it holds texture both ways a disagreement is an object
        covering or uncovering, or motion too fast for DIS, and the flow is kept.
        """
        frames = _check_frames(frames)
        starts = [int(i) for i in (range(len(frames) - 1) if starts is None else starts)]
        grays, scale = self._pair_grays(frames, starts)
        pairs = [self._trusted_pair(grays[i], grays[i + 1], scale) for i in starts]
        h, w = grays[starts[0]].shape if starts else (0, 0)
        flows = np.stack([f for f, _ in pairs]) if pairs else np.empty((0, h, w, 2), np.float32)
        trusted = np.stack([t for _, t in pairs]) if pairs else np.empty((0, h, w), bool)
        return flows, trusted

    def _trusted_pair(self, a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pair of :meth:`trusted_flows`: its forward flow (input pixels) and trusted mask."""
        forward = self._forward(a, b) * scale
        backward = self._forward(b, a)
        h, w = a.shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        back = cv2.remap(backward, xs + forward[..., 0] / scale[0], ys + forward[..., 1] / scale[1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE) * scale
        mismatch = np.square(forward + back).sum(-1)
        bound = CONFIRM_REL * (np.square(forward).sum(-1) + np.square(back).sum(-1)) + CONFIRM_ABS_PX**2
        return forward, (mismatch <= bound) | fixes_motion(a, self._dis.getPatchSize())

    def pair_rms(self, frames: np.ndarray, starts: Sequence[int]) -> np.ndarray:
        """As :meth:`FlowBackend.pair_rms`, from the flow at the analysed size scaled to input
        pixels, without resampling the field to the input size (which only interpolates it, at
        several times the cost of the flow on the 8 pairs a score uses).

        With ``trust`` (the default), over the pixels :meth:`trusted_flows` trusts; a pair with
        fewer than ``MIN_TRUSTED`` of them (frames that share little: a cut, noise) over every
        pixel.
        """
        frames = _check_frames(frames)
        starts = [int(i) for i in starts]
        grays, scale = self._pair_grays(frames, starts)
        out = np.empty(len(starts))
        for k, i in enumerate(starts):
            if self.trust:
                flow, ok = self._trusted_pair(grays[i], grays[i + 1], scale)
            else:
                flow, ok = self._forward(grays[i], grays[i + 1]) * scale, None
            square = np.square(flow, dtype=np.float64).sum(-1)
            if ok is not None and ok.mean() >= MIN_TRUSTED:
                square = square[ok]
            out[k] = np.sqrt(square.mean())
        return out


_RAFT_MODELS = ("raft_small", "raft_large")
FLOW_BACKENDS = ("dis", "raft", *_RAFT_MODELS)  # the names make_flow_backend takes (any case)
DEFAULT_RAFT_MODEL = "raft_small"
_RAFT_MIN_SIDE = 128  # 8× feature stride × 16 cells for the 4-level correlation pyramid


def _torchvision_raft_weights(model: str):
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

    return Raft_Small_Weights.DEFAULT if model == "raft_small" else Raft_Large_Weights.DEFAULT


def torchvision_raft_cache_path(model: str = "raft_small") -> Path:
    """Where torchvision caches the default weights of ``model`` (``torch.hub.get_dir()/checkpoints``).

    ``torch.hub.get_dir()`` follows ``TORCH_HOME`` at call time.
    """
    import torch

    url = _torchvision_raft_weights(model).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


class RAFTFlow(FlowBackend):
    """torchvision RAFT (Teed & Deng, 2020), the paper's flow estimator.

    Weights, first found wins: ``weights_path`` (a local torchvision-format state dict), the
    ``IC_RAFT_WEIGHTS`` environment variable, then torchvision's cache file for the default
    weights (``torch.hub.get_dir()/checkpoints/<file>``), loaded from disk — never downloaded.
    With none of them, :class:`MissingWeightsError`.

    ``random_init=True`` builds the architecture with random weights and loads nothing. Its flows
    are meaningless; it exists only to exercise this code path offline (tests, smoke runs). Its
    ``name`` carries a ``-random-init`` suffix so such scores can never pass for RAFT scores.

    Frames are mapped to [-1, 1] as torchvision's ``OpticalFlow`` preset does, resized by
    ``analysis_scale`` (default 1.0: the paper runs RAFT at the 256-pixel size), and edge-padded
    to a multiple of 8 (RAFT's requirement); the padding is cropped off the flow, which is then
    returned in input pixels. RAFT's correlation pyramid needs at least 128 analysed pixels per
    side, so a side that would be smaller is resized up to 128. Pairs run ``batch_size`` at a time.
    """

    def __init__(
        self,
        model: str = DEFAULT_RAFT_MODEL,
        weights_path: str | os.PathLike | None = None,
        device: str = "cpu",
        random_init: bool = False,
        analysis_scale: float = 1.0,
        iters: int = 12,
        batch_size: int = 8,
    ):
        import torch
        import torchvision
        from torchvision.models import optical_flow

        if model not in _RAFT_MODELS:
            raise ValueError(f"unknown RAFT model {model!r}; choose from {_RAFT_MODELS}")
        if random_init and weights_path is not None:
            raise ValueError("random_init=True and weights_path are mutually exclusive")
        if iters < 1 or batch_size < 1:
            raise ValueError(f"iters and batch_size must be >= 1, got {iters}, {batch_size}")
        self.model_name = model
        self.analysis_scale = _check_scale(analysis_scale)
        self.iters = int(iters)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

        net = getattr(optical_flow, model)(weights=None, progress=False)
        if random_init:
            self.weights_source = "random-init"
            self.name = f"{model}-random-init"
        else:
            path = find_raft_weights(model, weights_path)
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise ValueError(
                    f"{path} is not a torchvision {model} state dict (the original princeton-vl "
                    f"checkpoints use other key names): {exc}"
                ) from exc
            self.weights_source = path.name
            self.name = model
        self.net = net.eval().to(self.device)
        self.version = (
            f"torchvision-{torchvision.__version__} weights={self.weights_source} iters={self.iters} "
            f"analysis_scale={self.analysis_scale:g}"
        )

    def __repr__(self) -> str:
        return f"RAFTFlow(model={self.model_name!r}, weights={self.weights_source!r}, device={str(self.device)!r})"

    def flow(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return self.flows(np.stack([prev, nxt]))[0]

    def flows(self, frames: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        frames = _check_frames(frames)
        _, height, width, _ = frames.shape
        h, w = _analysis_size(height, width, self.analysis_scale, min_side=_RAFT_MIN_SIDE)
        pad_h, pad_w = (-h) % 8, (-w) % 8
        out = np.empty((len(frames) - 1, height, width, 2), np.float32)
        with torch.inference_mode():
            # Preprocess every frame once; pair i is (x[i], x[i + 1]).
            # A copy: frames may be a read-only or reversed view of a decoded buffer.
            x = torch.from_numpy(np.array(frames, copy=True)).to(self.device).permute(0, 3, 1, 2).float()
            x = x / 127.5 - 1.0  # torchvision OpticalFlow preset: [0, 255] -> [-1, 1]
            if (h, w) != (height, width):
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            for start in range(0, len(frames) - 1, self.batch_size):
                stop = min(start + self.batch_size, len(frames) - 1)
                flow = self.net(x[start:stop], x[start + 1 : stop + 1], num_flow_updates=self.iters)[-1]
                flow = flow[:, :, :h, :w]
                if (h, w) != (height, width):
                    flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
                    flow = flow * torch.tensor([width / w, height / h], device=flow.device).view(1, 2, 1, 1)
                out[start:stop] = flow.permute(0, 2, 3, 1).float().cpu().numpy()
        return out


def find_raft_weights(model: str = DEFAULT_RAFT_MODEL, weights_path: str | os.PathLike | None = None) -> Path:
    """The local weights file RAFT ``model`` loads: ``weights_path``, ``$IC_RAFT_WEIGHTS``, or
    torchvision's cache; else one MissingWeightsError saying what to set (nothing is loaded)."""
    if weights_path is not None:
        source, path = "weights_path", Path(weights_path)
    elif os.environ.get(RAFT_WEIGHTS_ENV):
        source, path = RAFT_WEIGHTS_ENV, Path(os.environ[RAFT_WEIGHTS_ENV])
    else:
        cached = torchvision_raft_cache_path(model)
        if cached.is_file():
            return cached
        raise MissingWeightsError(
            f"no {model} weights: set {RAFT_WEIGHTS_ENV}=/path/to/{cached.name} (a torchvision "
            f"state dict), pass weights_path=..., or place the file at the torchvision cache "
            f"path {cached} (TORCH_HOME); or use the offline DIS backend (ic curate --flow dis, "
            "make_flow_backend('dis'))."
        )
    if not path.is_file():
        raise MissingWeightsError(
            f"{model} weights not found at {path} (from {source}); point {RAFT_WEIGHTS_ENV} or "
            f"weights_path at a torchvision {model} state dict"
        )
    return path


def make_flow_backend(name: str, **kwargs) -> FlowBackend:
    """Build a backend by name: ``"dis"`` → :class:`DISFlow`, ``"raft"`` → :class:`RAFTFlow`.

    ``kwargs`` go to the constructor (``preset``, ``analysis_scale``, ``model``, ``weights_path``…).
    """
    key = name.lower()
    if key == "dis":
        return DISFlow(**kwargs)
    if key == "raft":
        return RAFTFlow(**kwargs)
    if key in _RAFT_MODELS:
        return RAFTFlow(model=key, **kwargs)
    raise ValueError(f"unknown flow backend {name!r}; choose one of {', '.join(FLOW_BACKENDS)}")


# --- scores --------------------------------------------------------------------------------------


def flow_rms_px(flows: np.ndarray) -> np.ndarray:
    """Per-pair score ``||F||_F / sqrt(H·W)`` of flows (N, H, W, 2): the RMS flow magnitude (N,)."""
    flows = np.asarray(flows, np.float64)
    if flows.ndim != 4 or flows.shape[-1] != 2:
        raise ValueError(f"flows must be (N, H, W, 2), got {flows.shape}")
    return np.sqrt(np.mean(np.sum(flows * flows, axis=-1), axis=(1, 2)))


def motion_score(frames: np.ndarray, backend: FlowBackend, max_pairs: int | None = None) -> float:
    """Mean over adjacent pairs of ``||F||_F / sqrt(H·W)``, in pixels per frame of ``frames``.

    ``frames``: uint8 (T, H, W, 3) RGB, T ≥ 2 (fewer → ValueError).
    ``max_pairs``: estimate the mean from this many evenly spaced adjacent pairs instead of all
    T − 1 (flow is the costliest part of scoring; the mean of a smooth clip barely moves).
    """
    frames = _check_frames(frames)
    num_pairs = len(frames) - 1
    if max_pairs is None or max_pairs >= num_pairs:
        starts = np.arange(num_pairs)
    elif max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    else:
        starts = np.unique(np.round(np.linspace(0, num_pairs - 1, max_pairs)).astype(int))
    pair_rms = getattr(backend, "pair_rms", None)  # None: a structural backend without it
    scores = pair_rms(frames, starts) if pair_rms else FlowBackend.pair_rms(backend, frames, starts)
    return float(np.mean(scores))


# --- dataset-wide filter -----------------------------------------------------------------------


def _check_scores(scores: Sequence[float]) -> np.ndarray:
    arr = np.asarray(scores, np.float64)
    if arr.ndim != 1:
        raise ValueError(f"scores must be a flat sequence, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr))
        raise ValueError(f"motion scores must be finite; non-finite at indices {bad[:10].tolist()}")
    return arr


def motion_threshold(scores: Sequence[float], drop_fraction: float = 0.25) -> float:
    """The score at or below which a clip is dropped.

    With the N scores sorted ascending ``s_1 ≤ … ≤ s_N`` and ``k = floor(drop_fraction · N)``,
    the threshold is ``s_k`` (the k-th smallest), and a clip is kept iff ``score > threshold``.
    When the scores are distinct exactly ``k`` clips are dropped (N = 8 → 2, N = 10 → 2).
    Ties: every clip equal to the threshold is dropped too, so with ties at ``s_k`` more than
    ``k`` clips may go; the result depends only on the multiset of scores, never on their order.
    ``k = 0`` (e.g. N < 4 at 25%) gives ``-inf``: nothing is dropped. Empty → ``nan``.
    Non-finite scores → ValueError.
    """
    if not (0.0 <= drop_fraction <= 1.0):
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    arr = _check_scores(scores)
    if arr.size == 0:
        return math.nan
    # The epsilon keeps e.g. 0.29 · 100 = 28.999… from flooring to 28.
    k = int(math.floor(drop_fraction * arr.size + 1e-9))
    if k == 0:
        return -math.inf
    return float(np.partition(arr, k - 1)[k - 1])


def motion_filter(scores: Sequence[float], drop_fraction: float = 0.25) -> tuple[float, np.ndarray]:
    """``(threshold, keep_mask)`` for the whole dataset's scores; see :func:`motion_threshold`.

    ``keep_mask`` is bool (N,), aligned with ``scores``: ``score > threshold``.
    Empty scores → ``(nan, empty mask)``.
    """
    threshold = motion_threshold(scores, drop_fraction)
    arr = _check_scores(scores)
    if arr.size == 0:
        return threshold, np.zeros(0, bool)
    return threshold, arr > threshold
