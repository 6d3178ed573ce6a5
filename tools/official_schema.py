"""Build the official Image Conductor models on the meta device and record their checkpoint schema.

Writes ``tests/fixtures/official_schema.json``: every ``state_dict()`` key (persistent buffers
included), its shape and dtype, for the three released checkpoints ``unet.ckpt``,
``image_controlnet.ckpt`` and ``flow_controlnet.ckpt``, exactly as the official
``main/inference.py`` of liyaowei-stu/ImageConductor builds the models that load them:

* ``UNet3DConditionFlowModel.from_pretrained_2d(sd15, subfolder="unet", unet_additional_kwargs=...)``
  with ``configs/inference/inference.yaml``. No SD 1.5 folder is needed: the official
  classmethod itself is called on a temporary folder holding runwayml/stable-diffusion-v1-5's
  ``unet/config.json`` and an empty weights file, so its block-type rewrite (to the 3D blocks)
  and ``from_config(config, **unet_additional_kwargs)`` run unchanged;
* ``utils.utils.create_image_controlnet(configs/inference/image_condition.yaml, unet)``;
* ``utils.utils.create_flow_controlnet(configs/inference/flow_condition.yaml, unet)`` followed by
  ``utils.lora_utils.add_LoRA_to_controlnet(64, flow_controlnet)`` (``--lora_rank`` default 64;
  adapters ``omcm_weights`` then ``cmcm_weights``).

Everything is built inside ``torch.device("meta")``: no memory, no weights, no download. Floating
tensors are recorded as ``float16`` (the release is fp16), any other tensor with its own dtype.

The official code is not part of this project: it is imported from an exported copy of the
repository given with ``--official``, under the library versions it was written for (diffusers
0.28.0, the repository's own vendored ``peft/`` package, which patches LoRA for its
``InflatedConv3d``), installed into a scratch ``--target`` folder that shadows the venv's
diffusers 0.42. The fixture was produced with (official commit
e83999add09ace0d5fb90b32595562c34254f05c)::

    mkdir -p /tmp/ic_official
    git --git-dir=/work/.mirror/liyaowei-stu+ImageConductor/repo archive HEAD | tar -x -C /tmp/ic_official
    .venv/bin/python -m pip install --no-deps --target /tmp/ic_scratch_site \\
        diffusers==0.28.0 peft==0.11.1 huggingface_hub==0.23.5 transformers==4.41.2 \\
        tokenizers==0.19.1 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 einops imageio
    rm -rf /tmp/ic_scratch_site/peft   # keep only peft's dist metadata: the vendored peft/ must win
    HF_HOME=/tmp/ic_hf_home PYTHONPATH=/tmp/ic_scratch_site:/tmp/ic_official \\
        .venv/bin/python tools/official_schema.py --official /tmp/ic_official \\
        --git-dir /work/.mirror/liyaowei-stu+ImageConductor/repo \\
        --out tests/fixtures/official_schema.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = "liyaowei-stu/ImageConductor"
LORA_RANK = 64  # main/inference.py: --lora_rank default

# runwayml/stable-diffusion-v1-5 unet/config.json
SD15_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# Counts seen in an earlier check of the released files: tensors, parameters (sum of numel).
EXPECTED = {
    "unet.ckpt": (1246, 1_277.8e6),
    "image_controlnet.ckpt": (486, 497.0e6),
    "flow_controlnet.ckpt": (1286, 578.8e6),
}


def build_models(official: Path):
    """The three models, as main/inference.py builds them, on the meta device."""
    import diffusers
    import peft
    import torch
    from omegaconf import OmegaConf

    if not Path(peft.__file__).resolve().is_relative_to(official.resolve()):
        raise SystemExit(f"peft imported from {peft.__file__}, not the vendored copy under {official}")
    if diffusers.__version__ != "0.28.0":
        raise SystemExit(f"diffusers {diffusers.__version__} imported from {diffusers.__file__}; want 0.28.0")

    from diffusers.utils import WEIGHTS_NAME
    from modules.unet import UNet3DConditionFlowModel
    from utils.lora_utils import add_LoRA_to_controlnet
    from utils.utils import create_flow_controlnet, create_image_controlnet

    inference_config = OmegaConf.load(official / "configs/inference/inference.yaml")
    with tempfile.TemporaryDirectory() as sd15:
        unet_dir = Path(sd15) / "unet"
        unet_dir.mkdir()
        (unet_dir / "config.json").write_text(json.dumps(SD15_UNET_CONFIG))
        torch.save({}, unet_dir / WEIGHTS_NAME)  # no SD weights: every key is "missing", which is fine
        with torch.device("meta"):
            unet = UNet3DConditionFlowModel.from_pretrained_2d(
                sd15, subfolder="unet",
                unet_additional_kwargs=OmegaConf.to_container(inference_config.unet_additional_kwargs),
            )
            image_controlnet = create_image_controlnet(str(official / "configs/inference/image_condition.yaml"), unet)
            flow_controlnet = create_flow_controlnet(str(official / "configs/inference/flow_condition.yaml"), unet)
            add_LoRA_to_controlnet(LORA_RANK, flow_controlnet)
    return {"unet.ckpt": unet, "image_controlnet.ckpt": image_controlnet, "flow_controlnet.ckpt": flow_controlnet}


def schema(model) -> dict:
    out = {}
    for key, tensor in sorted(model.state_dict().items()):
        dtype = "float16" if tensor.is_floating_point() else str(tensor.dtype).removeprefix("torch.")
        out[key] = [list(tensor.shape), dtype]
    return out


def dump(doc: dict) -> str:
    """JSON with one tensor entry per line (shape lists kept on that line)."""
    lines = ["{", f'  "source": {json.dumps(doc["source"])},', '  "files": {']
    files = list(doc["files"].items())
    for i, (name, entries) in enumerate(files):
        lines.append(f"    {json.dumps(name)}: {{")
        items = list(entries.items())
        for j, (key, value) in enumerate(items):
            lines.append(f"      {json.dumps(key)}: {json.dumps(value)}" + ("," if j < len(items) - 1 else ""))
        lines.append("    }" + ("," if i < len(files) - 1 else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="exported copy of the official repository")
    parser.add_argument("--git-dir", help="the official repository's git dir, to record its HEAD commit")
    parser.add_argument("--commit", help="the official commit, if --git-dir is not given")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/official_schema.json"))
    args = parser.parse_args(argv)

    commit = args.commit
    if args.git_dir:
        commit = subprocess.check_output(["git", "--git-dir", args.git_dir, "rev-parse", "HEAD"], text=True).strip()
    if not commit:
        parser.error("give --git-dir or --commit")

    official = args.official.resolve()
    sys.path.insert(0, str(official))
    cwd = os.getcwd()
    os.chdir(official)  # the official code resolves its config paths from the repository root
    try:
        models = build_models(official)
    finally:
        os.chdir(cwd)

    files = {name: schema(model) for name, model in models.items()}
    doc = {
        "source": {
            "repository": REPOSITORY,
            "commit": commit,
            "command": "HF_HOME=/tmp/ic_hf_home PYTHONPATH=/tmp/ic_scratch_site:/tmp/ic_official "
            ".venv/bin/python tools/official_schema.py --official /tmp/ic_official "
            "--git-dir /work/.mirror/liyaowei-stu+ImageConductor/repo --out tests/fixtures/official_schema.json",
            "diffusers": "0.28.0",
            "peft": "vendored (0.11.1 metadata)",
        },
        "files": files,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(doc))

    ok = True
    for name, entries in files.items():
        tensors = len(entries)
        params = 0
        for shape, _ in entries.values():
            n = 1
            for d in shape:
                n *= d
            params += n
        want_tensors, want_params = EXPECTED[name]
        match = tensors == want_tensors and round(params / 1e6, 1) == round(want_params / 1e6, 1)
        ok &= match
        print(f"{name}: {tensors:,} tensors, {params:,} parameters ({params / 1e6:.1f} M); "
              f"expected {want_tensors:,} / {want_params / 1e6:.1f} M: {'match' if match else 'MISMATCH'}")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
