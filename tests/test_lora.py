"""Camera/object LoRA adapters on the motion ControlNet: targets, activation, θ_0, stop-gradient,
save/load round trip, and the orthogonal loss against hand-computed values."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ic_model.models.lora import (
    LORA_TARGETS,
    METADATA_KEY,
    active_adapters,
    adapter_names,
    adapters_disabled,
    add_lora_adapter,
    freeze_adapter,
    load_adapter,
    lora_parameters,
    orthogonal_loss,
    save_adapter,
    set_active_adapters,
    set_trainable_adapters,
)

RANK = 4


def tiny_controlnet():
    from diffusers import UNetMotionModel

    from ic_model.models.motion_controlnet import build_motion_controlnet

    torch.manual_seed(0)
    unet = UNetMotionModel(
        in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
        num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=32,
    )
    return build_motion_controlnet(unet, 8).eval()


@pytest.fixture(scope="module")
def inputs():
    from ic_model.models.motion_controlnet import flow_to_controlnet_cond

    g = torch.Generator().manual_seed(1)
    b, t, h, w = 1, 4, 4, 4
    return dict(
        sample=torch.randn(b, 4, t, h, w, generator=g),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(b * t, 8, 32, generator=g),
        controlnet_cond=flow_to_controlnet_cond(torch.randn(b, 2, t, 8 * h, 8 * w, generator=g), 8),
    )


def run(model, inputs):
    down, mid = model(**inputs, return_dict=False)
    return torch.cat([r.flatten() for r in [*down, mid]])


def randomize(model, name, seed, std=0.1):
    """Stand in for a trained adapter: non-zero A and B."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model, name).values():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def base_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}


def kind(name):
    """A module name with its block indices dropped, e.g. ``attn1.to_q`` or ``motion:proj_in``."""
    generic = re.sub(r"\.\d+", ".N", name)
    return ("motion:" if ".motion_modules." in name else "") + generic.rsplit(".N.", 1)[-1]


# Every LoRA target of the two-block test ControlNet: one cross-attention down block (spatial
# transformer + resnet + motion module + downsampler), one plain down block (resnet with
# conv_shortcut + motion module), the cross-attention mid block, time embedding, conv_in, the
# conditioning conv and the zero-convs.
EXPECTED_TARGETS = {
    "conv_in": 1, "controlnet_cond_embedding": 1, "controlnet_down_blocks.N": 4,
    "controlnet_mid_block": 1, "time_embedding.linear_1": 1, "time_embedding.linear_2": 1,
    "conv1": 4, "conv2": 4, "conv_shortcut": 1, "time_emb_proj": 4, "conv": 1,
    "proj_in": 2, "proj_out": 2, "proj": 2, "ff.net.N": 2,
    **{f"{a}.{p}": 2 for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.N")},
    "motion:proj_in": 2, "motion:proj_out": 2, "motion:proj": 2, "motion:ff.net.N": 2,
    **{f"motion:attn1.{p}": 2 for p in ("to_q", "to_k", "to_v", "to_out.N")},
}


def test_targets_cover_the_official_list_and_nothing_else():
    model = tiny_controlnet()
    weighted = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    matched = {n for n, _ in model.named_modules() if re.fullmatch(LORA_TARGETS, n)}
    # Every Linear/Conv2d of the ControlNet is a target of the official release, and only those.
    assert matched == weighted
    assert Counter(kind(n) for n in matched) == EXPECTED_TARGETS

    add_lora_adapter(model, "camera", RANK, RANK)
    modules = dict(model.named_modules())
    assert {n for n in modules if n + ".base_layer" in modules} == matched
    # Base weights are frozen, the new adapter trains.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameters(model, "camera"))
    assert len(trainable) == 2 * len(matched)


def test_a_new_adapter_starts_as_the_official_release_initialises_it():
    """utils/lora_utils.py of the official code: ``init_lora_weights="gaussian"``, A ~ N(0, 1/r²)
    (peft's default is Kaiming-uniform, twice as wide on these layers), B = 0."""
    torch.manual_seed(0)
    model = tiny_controlnet()
    add_lora_adapter(model, "object", RANK, RANK)
    params = lora_parameters(model, "object")
    a = torch.cat([v.detach().flatten() for k, v in params.items() if ".lora_A." in k])
    b = torch.cat([v.detach().flatten() for k, v in params.items() if ".lora_B." in k])
    assert a.numel() > 10_000 and abs(a.std().item() * RANK - 1) < 0.02 and abs(a.mean().item()) * RANK < 0.02
    assert not b.any()


def test_adapters_start_as_identity_and_disabling_gives_the_base_model_exactly(inputs):
    # Bit-exact comparisons need fixed requires_grad flags: PyTorch's matmul takes a different
    # (equally valid) kernel path for a weight that requires grad, which moves the last bit.
    model = tiny_controlnet().requires_grad_(False)
    with torch.no_grad():
        base = run(model, inputs)
        add_lora_adapter(model, "camera", RANK, RANK)
        add_lora_adapter(model, "object", RANK, 2 * RANK)
        freeze_adapter(model, "camera")
        assert adapter_names(model) == ["camera", "object"]
        assert active_adapters(model) == ["camera", "object"]
        assert torch.equal(run(model, inputs), base)  # B = 0: nothing changes

        randomize(model, "camera", 2)
        randomize(model, "object", 3)
        both = run(model, inputs)
        assert not torch.allclose(both, base)
        with adapters_disabled(model):
            assert torch.equal(run(model, inputs), base)
        assert torch.equal(run(model, inputs), both)

        set_active_adapters(model, ["camera"])
        camera_only = run(model, inputs)
        assert not torch.allclose(camera_only, both)
        assert not torch.allclose(camera_only, base)
        set_active_adapters(model, ["camera", "object"])
        assert torch.equal(run(model, inputs), both)
    # Activation and disabling leave requires_grad alone (peft's own calls would reset it).
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameters(model, "object"))
    with pytest.raises(KeyError):
        set_active_adapters(model, ["camera", "style"])
    with pytest.raises(ValueError):
        add_lora_adapter(model, "camera", RANK, RANK)


def test_object_stage_trains_only_the_object_adapter(inputs):
    model = tiny_controlnet()
    add_lora_adapter(model, "camera", RANK, RANK)
    randomize(model, "camera", 2)
    freeze_adapter(model, "camera")
    add_lora_adapter(model, "object", RANK, RANK)
    assert active_adapters(model) == ["camera", "object"]
    cam = {n: p.detach().clone() for n, p in lora_parameters(model, "camera").items()}
    obj = {n: p.detach().clone() for n, p in lora_parameters(model, "object").items()}
    base = base_state(model)
    params = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(p) for p in lora_parameters(model, "object").values()}

    opt = torch.optim.Adam(params, lr=1e-3)
    target = torch.randn_like(run(model, inputs))
    for _ in range(3):
        opt.zero_grad()
        loss = (run(model, inputs) - target).pow(2).mean() + orthogonal_loss(model)
        loss.backward()
        opt.step()

    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in cam.items())
    assert all(torch.equal(now[n], v) for n, v in base.items())
    changed = [n for n, v in obj.items() if not torch.equal(now[n], v)]
    assert len(changed) == len(obj)


def test_orthogonal_loss_gradients_reach_the_object_adapter_only():
    model = tiny_controlnet()
    add_lora_adapter(model, "camera", RANK, RANK)
    add_lora_adapter(model, "object", RANK, RANK)
    randomize(model, "camera", 2)
    set_trainable_adapters(model, ["object"])
    orthogonal_loss(model, mode="paper").backward()
    for name, p in model.named_parameters():
        if name in lora_parameters(model, "object"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    # Detached inside the loss: even a trainable camera adapter gets no gradient from it.
    set_trainable_adapters(model, ["camera", "object"])
    model.zero_grad(set_to_none=True)
    orthogonal_loss(model, mode="cross").backward()
    assert all(p.grad is None for p in lora_parameters(model, "camera").values())


def test_save_load_round_trip(tmp_path, inputs):
    model = tiny_controlnet()
    add_lora_adapter(model, "camera", RANK, RANK)
    add_lora_adapter(model, "object", 2 * RANK, RANK)
    randomize(model, "camera", 2)
    randomize(model, "object", 3)
    save_adapter(model, "camera", tmp_path / "camera.safetensors")
    save_adapter(model, "object", tmp_path / "object.safetensors")
    with torch.no_grad():
        expected = run(model, inputs)
    with safe_open(str(tmp_path / "object.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()[METADATA_KEY]) == {
            "adapter": "object", "rank": 2 * RANK, "alpha": RANK, "targets": LORA_TARGETS,
        }
        assert all(".object." not in key for key in f.keys())

    fresh = tiny_controlnet()
    load_adapter(fresh, "camera", tmp_path / "camera.safetensors")
    load_adapter(fresh, "object", tmp_path / "object.safetensors")
    assert fresh.peft_config["object"].r == 2 * RANK
    assert active_adapters(fresh) == ["camera", "object"]
    with torch.no_grad():
        assert torch.equal(run(fresh, inputs), expected)
    # Loading into an adapter that already exists overwrites its weights in place.
    randomize(fresh, "camera", 7)
    load_adapter(fresh, "camera", tmp_path / "camera.safetensors")
    with torch.no_grad():
        assert torch.equal(run(fresh, inputs), expected)


def test_weights_files_are_written_atomically_and_readable_as_the_umask_allows(tmp_path, monkeypatch):
    """An adapter, a module and a raw tensor file: 0644 under umask 022 (safetensors 0.8 alone
    makes 0600, which kept a run folder from the colleagues it was shared with), 0600 under 077,
    no temp file left, and the tensors read back."""
    import os
    import stat

    from ic_model.models.files import load_safetensors, write_safetensors
    from ic_model.training.run import save_module

    model = tiny_controlnet()
    add_lora_adapter(model, "camera", RANK, RANK)
    old = os.umask(0o022)
    try:
        save_adapter(model, "camera", tmp_path / "camera.safetensors")
        save_module(nn.Linear(2, 3), tmp_path / "stage" / "module.safetensors")
        os.umask(0o077)
        write_safetensors({"x": torch.arange(3.0)}, tmp_path / "private.safetensors", metadata={"k": "v"})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    assert modes == {"camera.safetensors": 0o644, "module.safetensors": 0o644, "private.safetensors": 0o600}
    assert torch.equal(load_safetensors(tmp_path / "private.safetensors")["x"], torch.arange(3.0))
    assert set(load_safetensors(tmp_path / "stage" / "module.safetensors")) == {"weight", "bias"}
    # A write that fails after its temporary file exists leaves the previous file as it was and
    # no temporary file beside it.
    import ic_model.models.files as files

    def refuse(*args):
        raise OSError("no space left on device")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(OSError, match="no space left"):
        write_safetensors({"x": torch.zeros(5)}, tmp_path / "private.safetensors")
    monkeypatch.undo()
    assert torch.equal(load_safetensors(tmp_path / "private.safetensors")["x"], torch.arange(3.0))
    assert not list(tmp_path.glob("*.tmp"))


def test_load_is_strict(tmp_path):
    model = tiny_controlnet()
    add_lora_adapter(model, "camera", RANK, RANK)
    save_adapter(model, "camera", tmp_path / "camera.safetensors")

    other_targets = tiny_controlnet()
    add_lora_adapter(other_targets, "camera", RANK, RANK, r"(?:.*\.)?(?:to_q|to_k|to_v)")
    with pytest.raises(ValueError, match="does not match"):
        load_adapter(other_targets, "camera", tmp_path / "camera.safetensors")

    other_alpha = tiny_controlnet()
    add_lora_adapter(other_alpha, "camera", RANK, 2 * RANK)
    with pytest.raises(ValueError, match="alpha"):
        load_adapter(other_alpha, "camera", tmp_path / "camera.safetensors")

    save_file({"x.lora_A.weight": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="metadata"):
        load_adapter(tiny_controlnet(), "camera", tmp_path / "plain.safetensors")

    # A damaged or missing file: one error naming it (a bad input, not a bug: flows end in its line).
    from ic_model.models.files import WeightsFileError

    data = (tmp_path / "camera.safetensors").read_bytes()
    for name, payload, problem in (
        ("cut.safetensors", data[: len(data) // 2], "incomplete metadata, file not fully covered"),
        ("noise.safetensors", b"\xff" * 64, "header too large"),
    ):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(WeightsFileError) as caught:
            load_adapter(tiny_controlnet(), "camera", tmp_path / name)
        assert str(caught.value).startswith(f"{tmp_path / name}: not a readable safetensors file (")
        assert problem in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(WeightsFileError, match=f"^{tmp_path / 'gone.safetensors'}: no such weights file$"):
        load_adapter(tiny_controlnet(), "camera", tmp_path / "gone.safetensors")
    # One that exists but cannot be opened: safetensors calls it missing; the error says why.
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(WeightsFileError, match=f"^{tmp_path / 'folder.safetensors'}: cannot read the weights "
                                               r"file \(Is a directory\)$"):
        load_adapter(tiny_controlnet(), "camera", tmp_path / "folder.safetensors")


def two_layer_model(rank):
    """A Linear and a Conv2d, both carrying a camera and an object adapter of rank ``rank``."""
    model = nn.Sequential(nn.Linear(2, 3), nn.Conv2d(2, 3, kernel_size=3))
    add_lora_adapter(model, "camera", rank, rank, r"0|1")
    add_lora_adapter(model, "object", rank, rank, r"0|1")
    return model


def set_weights(model, name, weights):
    with torch.no_grad():
        for index, (a, b) in enumerate(weights):
            model[index].lora_A[name].weight.copy_(torch.as_tensor(a, dtype=torch.float32))
            model[index].lora_B[name].weight.copy_(torch.as_tensor(b, dtype=torch.float32))


def test_orthogonal_loss_matches_hand_computed_values():
    rng = np.random.default_rng(0)
    # Linear (in 2, out 3), rank 2, small integers worked out by hand:
    #   A_cam A_objᵀ = I·[[1,2],[3,4]]ᵀ = [[1,3],[2,4]];  I − it = [[0,−3],[−2,−3]] → 0+9+4+9 = 22
    #   B_camᵀ B_obj = [[1,0,0],[0,0,0]]·[[0,1],[1,0],[2,2]] = [[0,1],[0,0]]; I − it → 1+1+0+1 = 3
    #   cross: ‖[[1,3],[2,4]]‖² = 30, ‖[[0,1],[0,0]]‖² = 1
    lin_cam = ([[1, 0], [0, 1]], [[1, 0], [0, 0], [0, 0]])
    lin_obj = ([[1, 2], [3, 4]], [[0, 1], [1, 0], [2, 2]])
    # Conv2d (in 2, out 3, 3×3): A (2, 2, 3, 3) flattens to 2×18, B (3, 2, 1, 1) to 3×2.
    conv_cam, conv_obj = (
        tuple(rng.normal(size=shape).astype(np.float32) for shape in [(2, 2, 3, 3), (3, 2, 1, 1)])
        for _ in range(2)
    )
    model = two_layer_model(2)
    set_weights(model, "camera", [lin_cam, conv_cam])
    set_weights(model, "object", [lin_obj, conv_obj])

    def conv_terms(identity):
        a_cam, a_obj = (w[0].astype(np.float64).reshape(2, 18) for w in (conv_cam, conv_obj))
        b_cam, b_obj = (w[1].astype(np.float64).reshape(3, 2) for w in (conv_cam, conv_obj))
        target = np.eye(2) if identity else np.zeros((2, 2))
        return [np.sum((target - a_cam @ a_obj.T) ** 2), np.sum((target - b_cam.T @ b_obj) ** 2)]

    paper = np.mean([22.0, 3.0, *conv_terms(True)])
    cross = np.mean([30.0, 1.0, *conv_terms(False)])
    assert orthogonal_loss(model, mode="paper").item() == pytest.approx(paper, rel=1e-5)
    assert orthogonal_loss(model, mode="cross").item() == pytest.approx(cross, rel=1e-5)


def test_orthogonal_loss_rank_and_mode_checks():
    model = nn.Sequential(nn.Linear(4, 4))
    add_lora_adapter(model, "camera", 2, 2, r"0")
    add_lora_adapter(model, "object", 3, 3, r"0")
    with pytest.raises(ValueError, match="ranks"):
        orthogonal_loss(model, mode="paper")
    assert orthogonal_loss(model, mode="cross").item() >= 0  # r_cam × r_obj products are fine
    with pytest.raises(ValueError, match="mode"):
        orthogonal_loss(model, mode="frobenius")
    with pytest.raises(KeyError):
        orthogonal_loss(nn.Sequential(nn.Linear(2, 2)))
