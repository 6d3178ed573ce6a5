"""First-frame attention (ic_model.models.frame_attention): exact on frame 0, reads frame 0 elsewhere."""
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ic_model.models.tiny import build_tiny_components
from ic_model.config import preset_config, tiny_config
from ic_model.models.frame_attention import FirstFrameAttnProcessor

FRAMES, TOKENS, DIM = 4, 6, 16


def _attention():
    torch.manual_seed(0)
    return Attention(DIM, heads=2, dim_head=8)


def _first_frame(frames=FRAMES):
    processor = FirstFrameAttnProcessor()
    processor.num_frames = frames
    return processor


def test_frame0_is_ordinary_self_attention_and_other_frames_equal_attention_over_both():
    attn = _attention()
    hidden = torch.randn(2 * FRAMES, TOKENS, DIM)
    with torch.no_grad():
        out = _first_frame()(attn, hidden).view(2, FRAMES, TOKENS, DIM)
        plain = AttnProcessor2_0()(attn, hidden).view(2, FRAMES, TOKENS, DIM)
        torch.testing.assert_close(out[:, 0], plain[:, 0], rtol=1e-5, atol=1e-6)
        # Frame t by hand: softmax over [own tokens; frame 0's tokens] with per-head scaling.
        clips = hidden.view(2, FRAMES, TOKENS, DIM)
        for b in range(2):
            for t in range(1, FRAMES):
                x, x0 = clips[b, t], clips[b, 0]
                q, k, v = attn.to_q(x), attn.to_k(torch.cat([x, x0])), attn.to_v(torch.cat([x, x0]))
                heads = []
                for h in range(2):
                    s = slice(8 * h, 8 * h + 8)
                    w = torch.softmax(q[:, s] @ k[:, s].T / 8**0.5, dim=-1)
                    heads.append(w @ v[:, s])
                expected = attn.to_out[0](torch.cat(heads, dim=1))
                torch.testing.assert_close(out[b, t], expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[:, 1:], plain[:, 1:], atol=1e-3)


def test_later_frames_depend_on_frame0_and_not_on_each_other():
    attn = _attention()
    hidden = torch.randn(FRAMES, TOKENS, DIM)
    changed0, changed2 = hidden.clone(), hidden.clone()
    changed0[0] += 1.0
    changed2[2] += 1.0
    with torch.no_grad():
        out, out0, out2 = (_first_frame()(attn, h) for h in (hidden, changed0, changed2))
    assert (out0[1] - out[1]).abs().max() > 1e-3  # frame 1 reads frame 0
    torch.testing.assert_close(out2[1], out[1])  # but not frame 2
    torch.testing.assert_close(out2[3], out[3])


def test_processor_refuses_a_batch_that_is_not_whole_clips():
    with pytest.raises(ValueError, match="not a multiple of num_frames"):
        _first_frame(frames=3)(_attention(), torch.randn(4, TOKENS, DIM))


def test_processor_refuses_an_attention_with_norms_it_would_skip():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="does not apply"):
        _first_frame()(Attention(DIM, heads=2, dim_head=8, qk_norm="layer_norm"), torch.randn(FRAMES, TOKENS, DIM))


def test_tiny_unet_option_changes_only_spatial_self_attention_and_adds_no_weights():
    plain = build_tiny_components(tiny_config(num_frames=4))
    first = build_tiny_components(tiny_config(num_frames=4, spatial_attention="first_frame"))
    changed = {k for k, p in first.unet.attn_processors.items() if isinstance(p, FirstFrameAttnProcessor)}
    assert changed and all(k.endswith("attn1.processor") and "motion_modules" not in k for k in changed)
    assert not any(isinstance(p, FirstFrameAttnProcessor) for p in plain.unet.attn_processors.values())
    assert first.unet.state_dict().keys() == plain.unet.state_dict().keys()
    # Same weights (same init seed), a different function.
    lat = torch.randn(1, 4, 4, 8, 12)
    text = torch.randn(4, 77, 64)
    t = torch.tensor([500])
    with torch.no_grad():
        a = plain.unet(lat, t, text).sample
        b = first.unet(lat, t, text).sample
    assert not torch.allclose(a, b, atol=1e-4)


def test_config_validates_spatial_attention():
    with pytest.raises(ValueError, match="spatial_attention must be 'self' or 'first_frame'"):
        tiny_config(spatial_attention="all_frames")
    with pytest.raises(ValueError, match="sd15 preset keeps"):
        preset_config("sd15", spatial_attention="first_frame")


def test_a_copied_unet_sets_its_own_processors_frame_count():
    import copy

    unet = build_tiny_components(tiny_config(num_frames=4, spatial_attention="first_frame")).unet
    twin = copy.deepcopy(unet)
    with torch.no_grad():
        twin(torch.randn(1, 4, 3, 8, 12), torch.tensor([500]), torch.randn(3, 77, 64))
    frames = {p.num_frames for p in twin.attn_processors.values() if isinstance(p, FirstFrameAttnProcessor)}
    assert frames == {3}
