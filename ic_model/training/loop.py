"""One training loop; the stages are configuration.

Stages (paper §2.4, appendix C.1), each building on the one before:

- ``vae``    (tiny only) a small AutoencoderKL on curated frames.
- ``base``   (tiny only) UNet + motion module + image ControlNet as an image-to-video model.
- ``dense``  the motion ControlNet on all 256 tracks; everything else frozen.
- ``sparse`` the motion ControlNet fine-tuned on 1–8 intensity-sampled tracks.
- ``camera`` LoRA ``camera`` on the motion ControlNet, camera-only clips, ControlNet frozen.
- ``object`` LoRA ``object`` on mixed clips with ``camera`` loaded and frozen (stop-gradient,
  eq. 2) plus the orthogonal loss between the two adapters (eq. 4).

Run one stage in-process with :func:`train_stage`, or across processes with
``accelerate launch -m ic_model.training.loop STAGE …`` (same function; DDP through accelerate).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ic_data.settings import refuse
from ic_model.config import LORA_STAGES, ModelConfig, TrainConfig, load_json, save_json
from ic_model.models import lora
from ic_model.models.codec import encode_video
from ic_model.models.components import Components, frame_change
from ic_model.models.tokenizer import caption_ids
from ic_model.training.checkpoint import past_steps_problem, resume, save_checkpoint
from ic_model.training.data import make_loader
from ic_model.training.latent_cache import LatentCacheError, check_cache
from ic_model.training.stopping import StopAgreement, StopBetweenSteps
from ic_model.training.validation import filmstrip, validate
from ic_model.training.run import (
    LORA_FILES,
    STAGE_WEIGHTS,
    check_prerequisite,
    is_done,
    load_run_components,
    run_model_config,
    save_module,
    stage_dir,
)

# What each stage trains on: track mode for the conditioning, and the clip filter. The camera
# LoRA learns from camera-only clips, the object LoRA from mixed ones (appendix C.1: "camera-only
# data and mixed data ... camera LoRA and object LoRA respectively"): a RealEstate10K clip in the
# object stage would teach the object adapter camera motion, which eq. 5 subtracts.
STAGE_DATA = {
    "vae": ("dense", None),
    "base": ("dense", None),
    "dense": ("dense", None),
    "sparse": ("sparse", None),
    "camera": ("sparse", True),
    "object": ("sparse", False),
}


class StageModule(nn.Module):
    """All components of a stage, with exactly the stage's parameters trainable.

    ``forward`` returns the losses, so DDP wraps one module whatever the stage trains.
    """

    def __init__(
        self,
        comps: Components,
        stage: str,
        train_cfg: TrainConfig,
        camera_lora: str | os.PathLike | None = None,
    ):
        super().__init__()
        self.stage = stage
        self.cfg = comps.cfg
        self.train_cfg = train_cfg
        self.scheduler = comps.scheduler
        self.vae = comps.vae
        self.text_encoder = comps.text_encoder
        self.tokenizer = comps.tokenizer
        self.denoiser = comps.denoiser()
        self.requires_grad_(False)
        mc = comps.motion_controlnet
        if stage == "vae":
            self.vae.requires_grad_(True)
        elif stage == "base":
            comps.unet.requires_grad_(True)
            comps.image_controlnet.requires_grad_(True)
        elif stage in ("dense", "sparse"):
            mc.requires_grad_(True)
        elif stage in LORA_STAGES:
            rank, alpha, targets = self.cfg.lora_rank, self.cfg.lora_alpha, self.cfg.lora_targets
            if stage == "camera":
                lora.add_lora_adapter(mc, "camera", rank, alpha, targets)
            else:
                if camera_lora is None:
                    raise ValueError("the object stage needs the trained camera adapter")
                lora.load_adapter(mc, "camera", camera_lora)
                lora.freeze_adapter(mc, "camera")  # stop-gradient, eq. 2
                lora.add_lora_adapter(mc, "object", rank, alpha, targets)
            self.active_adapters = ["camera"] if stage == "camera" else ["camera", "object"]
            lora.set_active_adapters(mc, self.active_adapters)
            lora.set_trainable_adapters(mc, [stage])
        else:
            raise ValueError(f"unknown stage {stage!r}")
        if train_cfg.gradient_checkpointing:
            for m in (comps.unet, comps.image_controlnet, mc, self.vae):
                if getattr(m, "_supports_gradient_checkpointing", False):
                    m.enable_gradient_checkpointing()

    @property
    def motion_controlnet(self):
        return self.denoiser.motion_controlnet

    def forward(self, pixels, flow, input_ids, noise, timesteps, latents=None):
        """``latents``: the frames' cached VAE latents, instead of encoding ``pixels``."""
        if self.stage == "vae":
            return self._vae_losses(pixels, noise)
        with torch.no_grad():
            # The noise schedule in fp32 whatever the frozen VAE's dtype (as diffusers' training
            # scripts do): √ᾱ and √(1−ᾱ) in bf16 carry 3 significant digits.
            latents = (encode_video(self.vae, pixels) if latents is None else latents).float()
            text = self.text_encoder(input_ids)[0]
        noise = noise.float()
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        pred = self.denoiser(
            noisy,
            timesteps,
            text,
            latents[:, :, 0],
            flow=None if self.stage == "base" else flow,
        )
        target = diffusion_target(self.scheduler, latents, noise, timesteps)
        err = (pred.float() - target.float()) ** 2
        first = 1 if self.cfg.first_frame_latent == "clean" else 0  # a clean frame 0 is given, not learned
        err = err[:, :, first:]
        mse = err.mean()
        loss = mse
        if self.train_cfg.motion_loss_weight > 0 and self.stage != "base":
            weights = motion_weights(latents, self.train_cfg.motion_loss_weight)[:, :, first:]
            loss = (err * weights).mean() / weights.mean()
        losses = {"mse": mse, "loss": loss}
        if self.stage == "object" and self.train_cfg.ortho_weight > 0:
            ortho = lora.orthogonal_loss(
                self.motion_controlnet, "camera", "object", mode=self.train_cfg.ortho_mode
            )
            losses["ortho"] = ortho
            losses["loss"] = loss + self.train_cfg.ortho_weight * ortho
        return losses

    def _vae_losses(self, frames, eps):
        """frames (N, 3, H, W) in [-1, 1]; eps the reparameterisation noise for the posterior."""
        posterior = self.vae.encode(frames).latent_dist
        z = posterior.mean + posterior.std * eps
        recon = self.vae.decode(z).sample
        rec = F.mse_loss(recon.float(), frames.float())
        kl = posterior.kl().mean() / z[0].numel()
        return {"loss": rec + self.train_cfg.kl_weight * kl, "mse": rec, "kl": kl}

    def save_outputs(self, out_dir: Path) -> None:
        """Publish the stage's weights under their stable names (see run.py)."""
        modules = {
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "unet": self.denoiser.unet,
            "image_controlnet": self.denoiser.image_controlnet,
            "motion_controlnet": self.motion_controlnet,
        }
        if self.stage in STAGE_WEIGHTS:
            for name in STAGE_WEIGHTS[self.stage]:
                save_module(modules[name], out_dir / f"{name}.safetensors")
        else:
            for name in self.active_adapters:
                lora.save_adapter(self.motion_controlnet, name, out_dir / LORA_FILES[name])


def motion_weights(latents: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-position loss weights (B, 1, T, h, w): 1 + strength · (how much the latent changes
    from the previous frame, relative to the clip's mean change); frame 0 weighs 1.

    A small object is a sliver of the pixels, so an unweighted loss hardly notices whether it
    moves; this puts the gradient where the motion is (a toy-scale option, off by default)."""
    change = frame_change(latents)
    change = torch.cat([torch.zeros_like(change[:, :, :1]), change], dim=2)
    relative = change / (change.mean(dim=(2, 3, 4), keepdim=True) + 1e-6)
    return 1.0 + strength * relative


def diffusion_target(scheduler, latents, noise, timesteps) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return latents
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction_type {kind!r}")


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Noise for (seed, rank, step): reproducible without saving generator state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)


def sample_timesteps(n: int, cfg: ModelConfig, train_cfg: TrainConfig, gen) -> torch.Tensor:
    t = torch.randint(0, cfg.num_train_timesteps, (n,), generator=gen)
    if train_cfg.high_noise_prob > 0:
        high = torch.randint(train_cfg.high_noise_min_t, cfg.num_train_timesteps, (n,), generator=gen)
        pick = torch.rand(n, generator=gen) < train_cfg.high_noise_prob
        t = torch.where(pick, high, t)
    return t


def vae_frames(pixels: torch.Tensor, per_clip: int, gen) -> torch.Tensor:
    """A few random frames of each clip, as a batch of images for the VAE."""
    b, _, t = pixels.shape[:3]
    picks = torch.stack([torch.randperm(t, generator=gen)[:per_clip] for _ in range(b)])
    frames = pixels.permute(0, 2, 1, 3, 4)[torch.arange(b)[:, None], picks]
    return frames.reshape(-1, *frames.shape[2:])


class TrainingDiverged(RuntimeError):
    """The trained weights became NaN or infinite: nothing is saved as done."""


def _finite(params) -> bool:
    """Whether every trained weight is finite (one device sync)."""
    return bool(torch.stack([p.detach().isfinite().all() for p in params]).all())


@dataclass
class StepInputs:
    pixels: torch.Tensor | None
    flow: torch.Tensor
    input_ids: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    latents: torch.Tensor | None = None


def make_step_inputs(batch, comps_tokenizer, cfg: ModelConfig, train_cfg: TrainConfig, gen, device):
    """Tokens, noise and timesteps for one micro-batch (drawn from ``gen`` on the CPU, so a
    run gives the same numbers on any device)."""
    pixels = batch.pixels
    ids = caption_ids(comps_tokenizer, batch.captions, cfg.max_text_tokens)
    if train_cfg.stage == "vae":
        pixels = vae_frames(pixels, train_cfg.vae_frames_per_clip, gen)
        h, w = cfg.latent_size
        noise = torch.randn(pixels.shape[0], cfg.latent_channels, h, w, generator=gen)
        timesteps = torch.zeros(pixels.shape[0], dtype=torch.long)
    else:
        b, t = batch.flow.shape[0], batch.flow.shape[2]
        h, w = cfg.latent_size
        noise = torch.randn(b, cfg.latent_channels, t, h, w, generator=gen)
        timesteps = sample_timesteps(b, cfg, train_cfg, gen)
    latents = getattr(batch, "latents", None)
    return StepInputs(
        None if pixels is None else pixels.to(device), batch.flow.to(device), ids.to(device), noise.to(device),
        timesteps.to(device), None if latents is None else latents.to(device),
    )


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _append_metrics(path: Path, record: dict, resume_step: int | None = None) -> None:
    if resume_step is not None and path.exists():
        # A resumed run rewrites history after its checkpoint: keep lines up to it.
        kept = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
        path.write_text("".join(l + "\n" for l in kept))
    if record:
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def train_stage(
    stage: str,
    shards,
    run: str | os.PathLike,
    train_cfg: TrainConfig,
    model_cfg: ModelConfig | None = None,
    on_log: Callable[[dict], None] | None = None,
    progress: bool | None = None,
    on_validation: Callable[[list[dict]], None] | None = None,
) -> dict:
    """Train one stage into RUN/STAGE/ and return its summary (also written to done.json).

    Resumes from the stage's latest checkpoint; a stage already done for at least ``steps``
    returns its summary without training. ``progress``: a tqdm bar over the steps (None: only
    on a terminal; the Prefect task passes False and logs a line per interval instead).
    ``on_validation``: called with each validation's records (``train_cfg.validate_every``).
    """
    from accelerate import Accelerator

    run = Path(run)
    train_cfg.stage = stage
    refuse("TrainConfig", train_cfg.problems())  # a dataclass's fields may change after it is made
    if model_cfg is not None:
        model_cfg.validate()
    if model_cfg is not None and not (run / "config.json").exists():
        save_json(run / "config.json", model_cfg.to_dict())  # the run's model, for every later stage
        cfg = model_cfg
    elif model_cfg is not None:  # the run's own model: another one only while nothing has trained with it
        fields = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(ModelConfig) if f.name != "preset"}
        cfg = run_model_config(run, model_cfg.preset, **fields)
    else:
        cfg = run_model_config(run)
    if train_cfg.high_noise_prob > 0 and train_cfg.high_noise_min_t >= cfg.num_train_timesteps:
        raise ValueError(f"high_noise_min_t {train_cfg.high_noise_min_t} must be below the model's "
                         f"num_train_timesteps {cfg.num_train_timesteps}")
    check_prerequisite(run, cfg, stage)
    out_dir = stage_dir(run, stage)
    if is_done(run, stage):
        summary = load_json(out_dir / "done.json")
        if summary["steps"] >= train_cfg.steps:
            return {**summary, "skipped": True}
        (out_dir / "done.json").unlink()
    if problem := past_steps_problem(out_dir, train_cfg.steps):
        raise ValueError(problem)

    _fresh_accelerator_state()
    tracking = train_cfg.report_to != "none"
    accelerator = Accelerator(
        mixed_precision=train_cfg.mixed_precision,
        log_with=train_cfg.report_to if tracking else None,
        project_dir=str(out_dir / "logs"),
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    torch.manual_seed(train_cfg.seed + rank)

    comps = load_run_components(run, cfg, before_stage=stage,
                                torch_dtype=frozen_dtype(accelerator.mixed_precision))
    camera_lora = stage_dir(run, "camera") / LORA_FILES["camera"] if stage == "object" else None
    module = StageModule(comps, stage, train_cfg, camera_lora=camera_lora)
    _cast_frozen(module, accelerator.mixed_precision)
    module.to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params,
        lr=train_cfg.learning_rate,
        betas=train_cfg.adam_betas,
        weight_decay=train_cfg.adam_weight_decay,
    )
    warmup = max(train_cfg.warmup_steps, 0)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )

    # The newest checkpoint that reads back whole; a damaged newer one is moved aside (and named).
    start, damaged = resume(out_dir, module, optimizer, lr_scheduler, scaler=_scaler(accelerator),
                            move_aside=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_json(out_dir / "config.json", cfg.to_dict())
        save_json(out_dir / "train_config.json", train_cfg.to_dict())
        _append_metrics(out_dir / "metrics.jsonl", {}, resume_step=start)
        _append_metrics(out_dir / "validation.jsonl", {}, resume_step=start if start else -1)
        if start:
            print(f"{stage}: resuming from step {start} of {train_cfg.steps} (the checkpoint in "
                  f"{out_dir / 'checkpoints'})", file=sys.stderr, flush=True)
    if tracking:
        accelerator.init_trackers(stage, config=_hparams(train_cfg, cfg))

    if train_cfg.latent_cache:
        if stage == "vae":
            raise LatentCacheError("the vae stage trains the VAE: it cannot read cached latents (latent_cache)")
        check_cache(train_cfg.latent_cache, module.vae, cfg, shards)  # by this VAE, at this size, of these shards
    track_mode, camera_only = STAGE_DATA[stage]
    accum = train_cfg.grad_accum_steps
    loader = make_loader(
        shards,
        cfg,
        train_cfg,
        track_mode=track_mode,
        camera_only=camera_only,
        rank=rank,
        world_size=world,
        skip_batches=0 if train_cfg.overfit_one_batch else start * accum,
    )
    wrapped, optimizer = accelerator.prepare(module, optimizer)
    batches = iter(loader)
    fixed_batch = next(batches) if train_cfg.overfit_one_batch else None
    fixed_latents = None  # the fixed batch's VAE latents: the frozen VAE encodes it once

    samples_per_step = train_cfg.batch_size * accum * world
    history, t_last, steps_timed = [], time.perf_counter(), 0
    saved_step = start

    def stop_if_diverged(at_step: int, loss) -> None:
        # Checked when a step is logged or saved, and at the end: a NaN loss (too high a learning
        # rate) makes the weights NaN at the next optimiser step, and a checkpoint or done.json
        # of NaN weights would be a silent failure. fp16's loss scaler skips overflowing steps
        # itself, so only the weights are judged.
        if _finite(params):
            return
        raise TrainingDiverged(
            f"stage {stage}: the weights became NaN or infinite by step {at_step} (loss {float(loss):.4g}, "
            f"lr {train_cfg.learning_rate:g}): training diverged; lower the learning rate (--lr) or keep "
            f"gradient clipping on (max_grad_norm > 0). Checkpoints up to step {saved_step} are kept; "
            "nothing was marked done"
        )
    # tqdm's disable=None: a bar only on a terminal (no bar lines in CI or Prefect logs).
    show = None if progress is None else bool(progress)
    bar = tqdm(total=train_cfg.steps, initial=start, desc=f"train {stage}", unit="step",
               disable=True if (show is False or not accelerator.is_main_process) else (None if show is None else False))

    def run_validation(at_step: int) -> None:
        if accelerator.is_main_process:
            records = validate(accelerator.unwrap_model(wrapped), out_dir, at_step, device,
                               frozen_dtype(accelerator.mixed_precision) if accelerator.mixed_precision != "no" else None)
            for record in records:
                _append_metrics(out_dir / "validation.jsonl", record)
                if tracking:
                    tag = f"validation/{record['metric']}" + (f"_trajs{record['trajs_scale']:g}"
                                                            if stage == "object" else "")
                    accelerator.log({tag: record["value"]}, step=at_step)
                if train_cfg.report_to == "tensorboard":
                    _log_filmstrip(accelerator, tag, record["video"], at_step)
            if records and on_validation is not None:
                on_validation(records)
        accelerator.wait_for_everyone()

    def checkpoint(done_steps: int) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_checkpoint(out_dir, done_steps, accelerator.unwrap_model(wrapped), optimizer, lr_scheduler,
                            keep=train_cfg.keep_checkpoints, scaler=_scaler(accelerator))

    if train_cfg.validate_every > 0 and start == 0:
        run_validation(0)  # the untrained model: where the curve starts
    # Ctrl-C or SIGTERM: the step in progress finishes and is saved, then the signal acts. The
    # ranks of a multi-process run agree after every step, so they all stop after the same one.
    agree = StopAgreement(world)
    with StopBetweenSteps(repeat_acts=world == 1) as stops:
        for step in range(start, train_cfg.steps):
            gen = step_generator(train_cfg.seed, rank, 0 if fixed_batch is not None else step)
            totals: dict[str, torch.Tensor] = {}
            for micro in range(accum):
                batch = fixed_batch if fixed_batch is not None else next(batches)
                inputs = make_step_inputs(batch, comps.tokenizer, cfg, train_cfg, gen, device)
                if fixed_batch is not None and stage != "vae" and inputs.latents is None:
                    if fixed_latents is None:  # as the stage's forward encodes them, bit for bit
                        with torch.no_grad(), accelerator.autocast():
                            fixed_latents = encode_video(module.vae, inputs.pixels)
                    inputs = replace(inputs, latents=fixed_latents)
                sync = nullcontext() if micro == accum - 1 else accelerator.no_sync(wrapped)
                with sync:
                    with accelerator.autocast():
                        losses = wrapped(
                            inputs.pixels, inputs.flow, inputs.input_ids, inputs.noise, inputs.timesteps,
                            inputs.latents,
                        )
                    accelerator.backward(losses["loss"] / accum)
                for k, v in losses.items():  # on the device: read back only when logged
                    totals[k] = totals.get(k, 0.0) + v.detach().float() / accum
            # The norm before clipping (inf when clipping is off: only computed, never applied).
            grad_norm = accelerator.clip_grad_norm_(params, train_cfg.max_grad_norm if train_cfg.max_grad_norm > 0
                                                    else float("inf"))
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps_timed += 1
            bar.update(1)

            done_steps = step + 1
            logging_now = done_steps % train_cfg.log_every == 0 or done_steps == train_cfg.steps
            if logging_now or done_steps % train_cfg.save_every == 0:
                stop_if_diverged(done_steps, totals.get("loss", float("nan")))
            if logging_now:
                elapsed = time.perf_counter() - t_last
                record = {
                    "step": done_steps,
                    **{k: round(float(v), 6) for k, v in totals.items()},
                    "lr": lr_scheduler.get_last_lr()[0],
                    "samples_per_s": round(samples_per_step * steps_timed / elapsed, 3),
                    "peak_memory_mb": round(peak_memory_mb(device), 1),
                    "grad_norm": round(float(grad_norm), 6),
                }
                t_last, steps_timed = time.perf_counter(), 0
                bar.set_postfix(loss=record["loss"], refresh=False)
                history.append(record)
                if tracking:
                    accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=done_steps)
                if accelerator.is_main_process:
                    _append_metrics(out_dir / "metrics.jsonl", record)
                    if on_log is not None:
                        on_log({**record, "total_steps": train_cfg.steps, "stage": stage})
            if done_steps % train_cfg.save_every == 0 or done_steps == train_cfg.steps:
                checkpoint(done_steps)
                saved_step = done_steps

            if train_cfg.validate_every > 0 and (done_steps % train_cfg.validate_every == 0
                                                 or done_steps == train_cfg.steps):
                run_validation(done_steps)
            stop = agree(stops.pending)
            if stop is not None:  # Ctrl-C or SIGTERM (to any rank): this step is kept, then the signal acts
                if saved_step != done_steps:
                    checkpoint(done_steps)
                    accelerator.wait_for_everyone()  # no rank ends before rank 0 has saved
                bar.close()
                if accelerator.is_main_process:
                    print(f"{stage}: stopped by {signal.Signals(stop).name} after step {done_steps}, which is "
                          f"saved in {out_dir / 'checkpoints'}; the same command resumes from it", file=sys.stderr,
                          flush=True)
                stops.pending = stops.pending or stop  # a rank not signalled itself stops as the others do
                stops.deliver()
                if world > 1:  # its handler let it go on: alone, it would wait for the others forever
                    raise SystemExit(128 + stop)

    bar.close()
    extra = {}
    if stage == "vae":
        sample = [fixed_batch] if fixed_batch is not None else [next(batches) for _ in range(8)]
        extra["latent_scaling_factor"] = latent_scaling_factor(module.vae, sample, device)
    accelerator.wait_for_everyone()
    checksums = replica_checksums(accelerator, accelerator.unwrap_model(wrapped))
    summary = None
    if accelerator.is_main_process:
        accelerator.unwrap_model(wrapped).save_outputs(out_dir)
        if stage == "object":
            # Keep the camera adapter this object adapter was trained against beside it.
            shutil.copyfile(
                stage_dir(run, "camera") / LORA_FILES["camera"], out_dir / LORA_FILES["camera"]
            )
        summary = {
            **_summary(out_dir, stage, cfg, train_cfg, world),
            **extra,
            "replica_checksums": checksums,
            "replicas_identical": len(set(checksums)) == 1,
            "resumed_from_step": start,
            **({"damaged_checkpoints": damaged} if damaged else {}),
        }
        save_json(out_dir / "done.json", summary)
    accelerator.wait_for_everyone()
    if summary is None:
        summary = load_json(out_dir / "done.json")
    accelerator.end_training()
    return summary


@torch.no_grad()
def latent_scaling_factor(vae, batches, device) -> float:
    """1 / std of the latents on training clips, so the diffusion model sees unit-variance
    latents (how SD's 0.18215 was chosen); stored with the vae stage and applied on loading."""
    latents = [
        vae.encode(b.pixels.to(device).permute(0, 2, 1, 3, 4).flatten(0, 1)).latent_dist.mean
        for b in batches
    ]
    return float(1.0 / torch.cat(latents).float().std().clamp_min(1e-6))


def replica_checksums(accelerator, module: nn.Module) -> list[str]:
    """SHA-256 of the trainable weights on every process: DDP replicas must agree bit for bit."""
    digest = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().numpy().tobytes())
    words = torch.tensor(np.frombuffer(digest.digest(), dtype=np.int32).copy(), device=accelerator.device)
    gathered = accelerator.gather(words).reshape(-1, words.numel()).cpu().numpy()
    return [row.astype(np.int32).tobytes().hex()[:16] for row in gathered]


def _log_filmstrip(accelerator, tag: str, video: str, step: int) -> None:
    """The validation video as a strip of frames in TensorBoard (scalars go to every tracker)."""
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    writer.add_image(tag.replace("validation/", "validation_video/"), filmstrip(Path(video)), step, dataformats="HWC")


def _hparams(train_cfg: TrainConfig, cfg: ModelConfig) -> dict:
    """The run's settings as the trackers' hyperparameters (scalars and strings only)."""
    flat = {**{f"model/{k}": v for k, v in cfg.to_dict().items()}, **train_cfg.to_dict()}
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def frozen_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen weights are held in under ``mixed_precision`` (trained ones stay fp32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def _cast_frozen(module: StageModule, mixed_precision: str) -> None:
    """Frozen weights in the half dtype under mixed precision (memory), trained ones in fp32.

    Under fp16 the VAE stays fp32: SD's VAE overflows in fp16 (diffusers' training scripts keep it
    in fp32 too). In the LoRA stages the motion ControlNet's own weights are frozen as well: only
    its adapters' stay fp32."""
    dtype = frozen_dtype(mixed_precision)
    if dtype == torch.float32:
        return
    children = [module.text_encoder, module.denoiser.unet, module.denoiser.image_controlnet]
    if mixed_precision == "bf16":
        children.append(module.vae)
    for child in children:
        if not any(p.requires_grad for p in child.parameters()):
            child.to(dtype)
    if module.stage in LORA_STAGES:
        with torch.no_grad():
            for p in module.motion_controlnet.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(dtype)


def _scaler(accelerator):
    """fp16's loss scaler (its state is part of an exact resume); None otherwise."""
    return getattr(accelerator, "scaler", None)


def _fresh_accelerator_state() -> None:
    """accelerate keeps one global state per process, and a second ``Accelerator`` with another
    mixed precision raises: two stages in one process (the demo, a notebook) each get their own.
    The distributed part (process group, device) is kept."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)


def _summary(out_dir: Path, stage: str, cfg: ModelConfig, train_cfg: TrainConfig, world: int) -> dict:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines() if (out_dir / "metrics.jsonl").exists() else []
    records = [json.loads(l) for l in lines if l]
    first, last = (records[0], records[-1]) if records else ({}, {})
    speeds = [r["samples_per_s"] for r in records[1:]] or [r["samples_per_s"] for r in records]
    return {
        "stage": stage,
        "preset": cfg.preset,
        "steps": train_cfg.steps,
        "world_size": world,
        "global_batch": train_cfg.batch_size * train_cfg.grad_accum_steps * world,
        "first_loss": first.get("loss"),
        "final_loss": last.get("loss"),
        **{f"first_{k}": first[k] for k in ("mse", "ortho", "kl") if k in first},
        **{f"final_{k}": last[k] for k in ("mse", "ortho", "kl") if k in last},
        "samples_per_s": round(sum(speeds) / len(speeds), 3) if speeds else None,
        "peak_memory_mb": max((r["peak_memory_mb"] for r in records), default=None),
        "outputs": sorted(p.name for p in out_dir.glob("*.safetensors")),
    }


def launch_command(
    num_processes: int, stage: str, shards: str, run: str, train_config_json: str, mixed_precision: str = "no",
    model_config_json: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command (and environment) for a DDP run of one stage.

    On GPUs this is the usual ``--multi_gpu`` launch. Without CUDA, accelerate 1.x's ``--cpu``
    flag selects its single-process launcher unless MPI is configured, so CPU DDP (gloo) is the
    ``--multi_gpu`` launcher with ``ACCELERATE_USE_CPU=true``. ``model_config_json``: the full
    ModelConfig for the children, weight paths included (the run's config.json has none of the
    paths given to an existing run).
    """
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
        "-m", "ic_model.training.loop", stage, "--shards", str(shards), "--run", str(run),
        "--train-config", str(train_config_json),
    ]
    if model_config_json is not None:
        cmd += ["--model-config", str(model_config_json)]
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", "1")
    return cmd, env


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``accelerate launch -m ic_model.training.loop STAGE --shards … --run …``."""
    parser = argparse.ArgumentParser(prog="python -m ic_model.training.loop")
    parser.add_argument("stage")
    parser.add_argument("--shards", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--train-config", default=None, help="JSON file with TrainConfig fields")
    parser.add_argument("--model-config", default=None,
                        help="JSON file with the whole ModelConfig (weight paths included); default: the run's")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    fields = load_json(args.train_config) if args.train_config else {}
    if args.steps is not None:
        fields["steps"] = args.steps
    if args.batch_size is not None:
        fields["batch_size"] = args.batch_size
    train_cfg = TrainConfig.from_dict({**fields, "stage": args.stage})
    if args.model_config:
        cfg = ModelConfig.from_dict(load_json(args.model_config))
    else:
        cfg = run_model_config(args.run, args.preset)
    summary = train_stage(args.stage, args.shards, args.run, train_cfg, cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()


__all__ = [
    "STAGE_DATA",
    "StageModule",
    "TrainingDiverged",
    "diffusion_target",
    "launch_command",
    "main",
    "sample_timesteps",
    "step_generator",
    "train_stage",
]
