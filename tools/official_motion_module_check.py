"""One-off check: an official Image Conductor motion module against diffusers' AnimateDiff one.

The official ``VanillaTemporalModule`` (modules/motion_module.py of liyaowei-stu/ImageConductor,
built with ``configs/inference/inference.yaml``'s ``motion_module_kwargs`` at 320 channels) needs
diffusers 0.28, ours diffusers 0.42, so the check runs in two processes sharing one file:

``--side official`` (scratch PYTHONPATH, see tools/official_schema.py) builds the official module
with random fp32 weights (seed 0; every parameter re-drawn, so the zero-initialised ``proj_out``
is not zero and the norms are not identities), runs a random (B, C, F, H, W) input through it
and saves state dict, input and output to ``--path``.

``--side ours`` (the plain venv) builds the module diffusers' ``MotionModules`` builds
(``AnimateDiffTransformer3D``: 8 heads of 40, one layer, two self-attentions, sinusoidal
positions up to 32, 32 norm groups), loads the official weights through a key renaming (checked
against diffusers' ``convert_animatediff_checkpoint_to_diffusers``), strictly, and prints the max
abs difference to the official output, as is (diffusers group-normalises over all frames
jointly) and with the temporal GroupNorm applied per frame as the official code does.

Run (official commit e83999add09ace0d5fb90b32595562c34254f05c, exported to /tmp/ic_official)::

    HF_HOME=/tmp/ic_hf_home PYTHONPATH=/tmp/ic_scratch_site:/tmp/ic_official \\
        .venv/bin/python tools/official_motion_module_check.py --side official --official /tmp/ic_official
    .venv/bin/python tools/official_motion_module_check.py --side ours
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

B, C, FRAMES, H, W = 1, 320, 16, 8, 12


def randomize(module: torch.nn.Module) -> None:
    """Re-draw every parameter: norms near identity but not equal to it, weights ~ 1/sqrt(fan_in)."""
    for name, p in module.named_parameters():
        with torch.no_grad():
            if p.ndim == 1:
                is_norm_weight = name.endswith("weight")
                p.copy_((1.0 if is_norm_weight else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)


def official_side(path: Path, official: Path | None) -> None:
    if official is not None:
        sys.path.insert(0, str(official.resolve()))
    import diffusers
    from modules.motion_module import get_motion_module
    from omegaconf import OmegaConf

    repo = official or Path(sys.modules["modules"].__path__[0]).parent
    cfg = OmegaConf.to_container(OmegaConf.load(repo / "configs/inference/inference.yaml").unet_additional_kwargs)
    torch.manual_seed(0)
    module = get_motion_module(C, cfg["motion_module_type"], cfg["motion_module_kwargs"]).eval()
    randomize(module)
    x = torch.randn(B, C, FRAMES, H, W)
    with torch.no_grad():
        y = module(x, None, None)
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    torch.save({"state_dict": state, "input": x, "output": y, "kwargs": cfg["motion_module_kwargs"],
                "diffusers": diffusers.__version__}, path)
    print(f"official (diffusers {diffusers.__version__}): {len(state)} tensors, kwargs {cfg['motion_module_kwargs']}")
    print(f"input std {x.std():.4f}, output std {y.std():.4f}, (output - input) std {(y - x).std():.4f}")
    print(f"saved {path}")


def rename(key: str) -> str | None:
    """Official motion-module key -> diffusers AnimateDiffTransformer3D key (None: dropped)."""
    key = key.replace("temporal_transformer.", "", 1)
    key = re.sub(r"attention_blocks\.(\d+)\.pos_encoder\.pe", lambda m: "pos_embed.pe" if m.group(1) == "0" else "", key)
    if key.endswith("."):
        return None  # attention_blocks.1.pos_encoder.pe: diffusers shares one buffer between attn1 and attn2
    key = re.sub(r"attention_blocks\.(\d+)\.", lambda m: f"attn{int(m.group(1)) + 1}.", key)
    key = re.sub(r"norms\.(\d+)\.", lambda m: f"norm{int(m.group(1)) + 1}.", key)
    return key.replace("ff_norm.", "norm3.")


class PerFrameGroupNorm(torch.nn.Module):
    """The diffusers module's GroupNorm, applied to each frame separately (as the official code does)."""

    def __init__(self, norm: torch.nn.GroupNorm):
        super().__init__()
        self.inner = norm

    def forward(self, x):  # (B, C, F, H, W)
        b, c, f, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        n = self.inner
        y = F.group_norm(y, n.num_groups, n.weight, n.bias, n.eps)
        return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def ours_side(path: Path) -> None:
    import diffusers
    from diffusers.loaders.single_file_utils import (
        convert_animatediff_checkpoint_to_diffusers,
    )
    from diffusers.models.unets.unet_motion_model import MotionModules

    saved = torch.load(path, weights_only=True)  # tensors and plain data: a shared file runs no code
    official, x, y_official = saved["state_dict"], saved["input"], saved["output"]
    kw = saved["kwargs"]

    module = MotionModules(
        in_channels=C, layers_per_block=1, transformer_layers_per_block=kw["num_transformer_block"],
        num_attention_heads=kw["num_attention_heads"], max_seq_length=kw["temporal_position_encoding_max_len"],
    ).motion_modules[0].eval()

    # the rename list against diffusers' own converter (which needs a full-model prefix)
    prefix = "down_blocks.0.motion_modules.0."
    converted = convert_animatediff_checkpoint_to_diffusers({prefix + k: v for k, v in official.items()})
    converted = {k.removeprefix(prefix) for k in converted}
    mine = {k: rename(k) for k in official}
    ours_keys = {v for v in mine.values() if v is not None}
    print("rename == diffusers converter (pos_encoder aside):", ours_keys - {"transformer_blocks.0.pos_embed.pe"} == converted,
          "| converter drops:", sorted(k for k in official if "pos_encoder" in k))

    pes = [v for k, v in official.items() if "pos_encoder.pe" in k]
    ref_pe = module.transformer_blocks[0].pos_embed.pe
    print("official pe buffers equal each other and diffusers' pe:",
          all(torch.equal(p, pes[0]) for p in pes), torch.allclose(pes[0], ref_pe, atol=0, rtol=0) or
          f"max diff {(pes[0] - ref_pe).abs().max():.3g}")

    state = {mine[k]: v for k, v in official.items() if mine[k] is not None}
    module.load_state_dict(state, strict=True)

    frames = x.shape[2]
    x_ours = x.permute(0, 2, 1, 3, 4).reshape(-1, *x.shape[1:2], *x.shape[3:])

    def run():
        with torch.no_grad():
            y = module(x_ours, num_frames=frames)
        return y.reshape(x.shape[0], frames, *y.shape[1:]).permute(0, 2, 1, 3, 4)

    y_joint = run()
    module.norm = PerFrameGroupNorm(module.norm)
    y_frame = run()
    print(f"diffusers {diffusers.__version__}; official output std {y_official.std():.4f}, "
          f"(output - input) std {(y_official - x).std():.4f}")
    print(f"max |diffusers - official|, GroupNorm over all frames (diffusers as is): {(y_joint - y_official).abs().max():.4g}")
    print(f"max |diffusers - official|, GroupNorm per frame (official behaviour):   {(y_frame - y_official).abs().max():.4g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("official", "ours"), required=True)
    parser.add_argument("--official", type=Path, help="exported official repository (else from PYTHONPATH)")
    parser.add_argument("--path", type=Path, default=Path("/tmp/mm_check.pt"))
    args = parser.parse_args(argv)
    if args.side == "official":
        official_side(args.path, args.official)
    else:
        ours_side(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
