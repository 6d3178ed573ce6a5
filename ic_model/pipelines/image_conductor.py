"""Image-to-video sampling with trajectory control and camera-free guidance (paper §2.5).

The loop in :meth:`ImageConductorPipeline.__call__` is the whole method at inference:

    for each DDIM step t:
        ε_θ0(∅), ε_θ0(c)   one batched pass, motion ControlNet without LoRA (θ0)
        ε_θobj(c)          one pass with the object adapter (θ_trajs)
        ε̂ = ε_θ0(∅) + λ_cfg (ε_θ0(c) − ε_θ0(∅)) + λ_trajs (ε_θobj(c) − ε_θ0(c))      (eq. 5)

λ_trajs = 1 means "off": the `camera`, `object` and `none` modes then run the usual two-branch
CFG with the chosen adapter (two evaluations per step instead of three). ∅ is the empty prompt: the first frame and the trajectories condition
both branches, as in SparseCtrl/AnimateDiff pipelines. The guidance combines model outputs
linearly, so it applies unchanged to the tiny preset's x0 prediction.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler
from tqdm.auto import tqdm

from ic_data.clips import (
    CLIP_HEIGHT,
    CLIP_WIDTH,
    ClipGeometry,
    center_crop_box,
    resize_points,
    resized_size,
)
from ic_data.errors import BadInputError, MissingInputError
from ic_data import settings
from ic_data.trajectories import (
    require_in_view,
    tracks_to_flow_maps,
    user_tracks_to_array,
    validate_trajectories,
)
from ic_model.config import ModelConfig, device_problem
from ic_model.models import lora
from ic_model.models.codec import decode_latents, encode_video
from ic_model.models.components import Components, encode_text
from ic_model.training.run import (
    LORA_FILES,
    is_done,
    load_run_components,
    run_model_config,
    stage_dir,
)

# "base": the image-to-video base alone, motion ControlNet off (the "no motion control" baseline).
MODES = ("camera", "object", "none", "base")


@dataclass
class PreparedInput:
    """The conditioning image and trajectories in the model's pixel space."""

    image: np.ndarray  # uint8 (H, W, 3) at the model size
    tracks: np.ndarray  # float32 (T, N, 2) in model pixels
    geometry: ClipGeometry  # source image pixels → 384×256 clip pixels


TRAJECTORY_SPACES = ("image", "model")
GENERATE_MAX_UPSCALE = 16.0  # a first frame may be enlarged this much to cover the 384×256 crop


def prepare_image_and_tracks(
    image: np.ndarray, trajectories, cfg: ModelConfig, max_tracks: int | None = 8,
    trajectory_space: str = "image",
) -> PreparedInput:
    """Resize/crop the image as curation does (cover 384×256, centre crop), then to the model
    size, and map the user's trajectories (image pixels) through the same transform.

    ``trajectories``: parsed JSON (list of tracks of [x, y]); each track of any length ≥ 1 is
    resampled (PCHIP) to the frame count. ``trajectory_space``: "image" (the input image's
    pixels) or "model" (pixels of the cropped frame at the model size, cfg.width × cfg.height:
    the official demo's and example files' convention, 384×256 for sd15). Every problem raises
    one TrajectoryError naming the track and point.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if trajectory_space not in TRAJECTORY_SPACES:
        raise ValueError(f"trajectory_space must be one of {TRAJECTORY_SPACES}, got {trajectory_space!r}")
    h, w = image.shape[:2]
    if trajectory_space == "model":
        tracks = validate_trajectories(trajectories, cfg.width, cfg.height, max_tracks=max_tracks)
    else:
        tracks = validate_trajectories(trajectories, w, h, max_tracks=max_tracks)
        require_in_view(tracks, w, h, GENERATE_MAX_UPSCALE)
    rw, rh = resized_size(w, h, max_upscale=GENERATE_MAX_UPSCALE)
    box = center_crop_box(rw, rh)
    geometry = ClipGeometry(scale=(rw / w, rh / h), crop=box)
    interp = cv2.INTER_AREA if rw < w else cv2.INTER_LINEAR
    clip = cv2.resize(image, (rw, rh), interpolation=interp)[box[1] : box[1] + box[3], box[0] : box[0] + box[2]]
    model_image = cv2.resize(clip, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
    to_model = np.array([cfg.width / CLIP_WIDTH, cfg.height / CLIP_HEIGHT])
    if trajectory_space == "model":
        mapped = tracks
    else:
        mapped = [resize_points(geometry.source_to_clip(t), (CLIP_WIDTH, CLIP_HEIGHT), (cfg.width, cfg.height))
                  for t in tracks]
    return PreparedInput(
        image=np.ascontiguousarray(model_image),
        tracks=user_tracks_to_array(mapped, cfg.num_frames, still_step=to_model),  # the official +1 px at 384×256
        geometry=geometry,
    )


def clip_tracks_to_source(tracks_model: np.ndarray, geometry: ClipGeometry, cfg: ModelConfig) -> np.ndarray:
    """Inverse of the mapping in :func:`prepare_image_and_tracks` (for drawing on the input)."""
    clip = resize_points(tracks_model, (cfg.width, cfg.height), (CLIP_WIDTH, CLIP_HEIGHT))
    return geometry.clip_to_source(clip).astype(np.float32)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class RunNotTrainedError(BadInputError):
    """A run with nothing to generate with yet: its model would run on random weights."""


class SamplingDiverged(BadInputError):
    """Sampling ended in NaN or infinite latents: the settings asked for more than the model
    and its number format hold (a guidance scale far too large, fp16 overflow)."""


class ImageConductorPipeline:
    """Components + both adapters, with DDIM sampling and camera-free guidance.

    ``dtype`` is what the networks run in; the DDIM latents and the guidance arithmetic stay in
    float32, and under fp16 the VAE stays float32 (SD's VAE overflows in fp16).
    ``decode_chunk_size`` frames are decoded at a time, so the decode does not set the peak memory.
    ``cast=False`` leaves the modules' device, dtype and mode alone (sampling from weights that
    are being trained: the caller sets eval mode and autocast).
    """

    def __init__(self, comps: Components, device: str | torch.device = "cpu", dtype=torch.float32,
                 decode_chunk_size: int = 4, cast: bool = True):
        self.comps = comps
        self.cfg = comps.cfg
        self.device = torch.device(device)
        self.dtype = DTYPES.get(dtype, dtype)
        self.decode_chunk_size = decode_chunk_size
        self.progress_bar_config: dict = {}
        self.denoiser = comps.denoiser()
        if cast:  # else the modules stay where and what they are (validation during training)
            self.denoiser.to(self.device, self.dtype).eval()
            comps.vae.to(self.device, torch.float32 if self.dtype == torch.float16 else self.dtype).eval()
            comps.text_encoder.to(self.device, self.dtype).eval()
        self.scheduler = DDIMScheduler(
            num_train_timesteps=self.cfg.num_train_timesteps,
            beta_start=self.cfg.beta_start,
            beta_end=self.cfg.beta_end,
            beta_schedule=self.cfg.beta_schedule,
            prediction_type=self.cfg.prediction_type,
            clip_sample=False,
            # The official inference builds DDIM from AnimateDiff's noise_scheduler_kwargs, which
            # leave diffusers' default: the last step lands on the predicted x0 (with False it kept
            # √(1 − ᾱ₀) ≈ 0.03 of the predicted noise in the final latents).
            set_alpha_to_one=True,
            steps_offset=1,
        )

    @classmethod
    def from_run(
        cls, run: str | os.PathLike, device: str | torch.device = "cpu", dtype=torch.float32, **weights
    ) -> "ImageConductorPipeline":
        """Everything a run has finished: base, motion ControlNet, and the adapters it trained.
        ``dtype``: a torch dtype or "fp32" / "bf16" / "fp16"; sd15 weights load straight into it."""
        if not (Path(run) / "config.json").is_file():
            raise MissingInputError(f"{run} is not a run folder (it has no config.json): train a stage into it first")
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ValueError(f"dtype must be a torch dtype or one of {sorted(DTYPES)}, got {dtype!r}")
        problem = device_problem(str(device))  # before the weights load, not when they are moved
        if problem:
            raise BadInputError(f"device {device!r}: {problem}")
        dtype = DTYPES.get(dtype, dtype)
        cfg = run_model_config(run, None, **weights) if weights else run_model_config(run)
        if cfg.preset == "tiny" and not is_done(run, "base"):  # sd15's base is the pretrained one
            raise RunNotTrainedError(
                f"{run}: the tiny preset's 'base' stage has not finished ({stage_dir(run, 'base') / 'done.json'} "
                "is missing), so there are no weights to generate with: train it first (`ic train base`)")
        comps = load_run_components(run, cfg, torch_dtype=dtype)
        mc = comps.motion_controlnet
        for name in ("camera", "object"):
            if is_done(run, name):
                lora.load_adapter(mc, name, stage_dir(run, name) / LORA_FILES[name])
        mc.requires_grad_(False)
        return cls(comps, device, dtype)

    @property
    def adapters(self) -> list[str]:
        return lora.adapter_names(self.comps.motion_controlnet)

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm options for the sampling loop's progress bar, e.g. ``disable=True`` (diffusers' name).
        By default the bar shows only on a terminal."""
        self.progress_bar_config = kwargs

    def _use_adapter(self, mode: str):
        """Context: the motion ControlNet as θ_mode (adapter switch, no weight reload)."""
        mc = self.comps.motion_controlnet
        if mode in ("none", "base"):
            return lora.adapters_disabled(mc) if self.adapters else contextlib.nullcontext()
        if mode not in self.adapters:
            raise ValueError(f"mode {mode!r} needs the {mode} adapter; this run has {self.adapters or 'none'}")
        lora.set_active_adapters(mc, [mode])
        return contextlib.nullcontext()

    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        prompt: str,
        tracks: np.ndarray,
        mode: str = "object",
        num_inference_steps: int = 25,
        guidance_scale: float = 8.5,
        trajs_scale: float = 1.0,
        negative_prompt: str = "",
        seed: int = 0,
        motion_scale: float = 1.0,
        output_type: str = "np",
    ) -> np.ndarray | torch.Tensor:
        """Generate ``cfg.num_frames`` frames from ``image`` (uint8 (H, W, 3) at the model size)
        and ``tracks`` (float32 (T, N, 2) in model pixels). Returns uint8 (T, H, W, 3).

        ``trajs_scale`` is λ_trajs of eq. 5 (object mode only; 1.0 = off). ``output_type="latent"``
        returns the final latents (1, C, T, h, w) instead of decoded frames.
        """
        cfg = self.cfg
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if trajs_scale != 1.0 and mode != "object":
            raise ValueError("camera-free guidance (trajs_scale != 1) applies to the object mode")
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != (cfg.height, cfg.width, 3):
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image must be uint8 {cfg.height}×{cfg.width}×3 (use prepare_image_and_tracks), got {got}")
        if not isinstance(tracks, np.ndarray) or tracks.ndim != 3 or tracks.shape[0] != cfg.num_frames or tracks.shape[2] != 2:
            got = tracks.shape if isinstance(tracks, np.ndarray) else type(tracks).__name__
            raise ValueError(f"tracks must be a ({cfg.num_frames}, N, 2) array, got {got}")
        if not np.isfinite(tracks).all():
            raise ValueError("tracks must be finite numbers")
        settings.refuse("ImageConductorPipeline", [
            settings.whole("num_inference_steps", num_inference_steps, 1, self.scheduler.config.num_train_timesteps),
            settings.number("guidance_scale", guidance_scale), settings.number("trajs_scale", trajs_scale),
            settings.number("motion_scale", motion_scale), settings.whole("seed", seed, 0, 2**63 - 1),
            settings.text("prompt", prompt), settings.text("negative_prompt", negative_prompt),
            settings.one_of("output_type", output_type, ("np", "latent")),
        ])
        dev, dt = self.device, self.dtype

        # 1. Conditions: first-frame latent, text (∅ and c), trajectory maps.
        pixels = torch.from_numpy(image).to(dev, dt).permute(2, 0, 1)[None, :, None] / 127.5 - 1
        first_latent = encode_video(self.comps.vae, pixels)[:, :, 0].to(dt)
        text = encode_text(self.comps, [negative_prompt, prompt], dev).to(dt)
        flow = tracks_to_flow_maps(
            tracks, height=cfg.height, width=cfg.width, kernel_size=cfg.flow_kernel_size, sigma=cfg.flow_sigma
        )
        flow = torch.from_numpy(flow)[None].to(dev, dt)
        first_pair, flow_pair = first_latent.expand(2, -1, -1, -1), flow.expand(2, -1, -1, -1, -1)
        if mode == "base":
            flow_pair = None  # no motion ControlNet: the trajectories are ignored

        # 2. Initial noise and the DDIM schedule.
        h, w = cfg.latent_size
        gen = torch.Generator().manual_seed(seed)
        latents = torch.randn(1, cfg.latent_channels, cfg.num_frames, h, w, generator=gen).to(dev)
        self.scheduler.set_timesteps(num_inference_steps, device=dev)
        latents = latents * self.scheduler.init_noise_sigma
        guided = mode == "object" and trajs_scale != 1.0

        # 3. The sampling loop (latents and guidance in float32, the networks in ``dt``).
        bar = tqdm(self.scheduler.timesteps, desc=f"sampling ({mode})", **{"disable": None, **self.progress_bar_config})
        for t in bar:
            x = latents.to(dt)
            if guided:
                out_uncond, out_cond, out_obj = (o.float() for o in self.denoiser.camera_free_guidance(
                    x, t, text, first_latent, flow, self._use_adapter, motion_scale=motion_scale))
                out = out_uncond + guidance_scale * (out_cond - out_uncond) + trajs_scale * (out_obj - out_cond)
            else:
                with self._use_adapter(mode):
                    out_uncond, out_cond = self.denoiser(
                        x.expand(2, -1, -1, -1, -1), t.expand(2), text, first_pair,
                        flow=flow_pair, motion_scale=motion_scale,
                    ).float().chunk(2)
                out = out_uncond + guidance_scale * (out_cond - out_uncond)
            latents = self.scheduler.step(out, t, latents).prev_sample
        if not bool(torch.isfinite(latents).all()):  # else a black or garbled video, written as "ok"
            raise SamplingDiverged(
                f"sampling diverged to NaN/inf latents (mode {mode}, guidance_scale {guidance_scale:g}, "
                f"trajs_scale {trajs_scale:g}, {str(dt).removeprefix('torch.')}): lower the guidance scales"
                + (" or sample in bf16/fp32" if dt == torch.float16 else "")
            )
        if cfg.first_frame_latent == "clean":  # the last step leaves frame 0 a trace of noise away
            latents[:, :, 0] = first_latent.float()

        # 4. Decode.
        if output_type == "latent":
            return latents
        video = decode_latents(self.comps.vae, latents, self.decode_chunk_size)[0]  # (3, T, H, W) in [-1, 1]
        frames = ((video.permute(1, 2, 3, 0).float().cpu().numpy() + 1) * 127.5).round().clip(0, 255)
        return frames.astype(np.uint8)


__all__ = [
    "MODES",
    "ImageConductorPipeline",
    "PreparedInput",
    "SamplingDiverged",
    "clip_tracks_to_source",
    "prepare_image_and_tracks",
]
