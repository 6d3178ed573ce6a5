"""Cached VAE latents: the same batches as encoding every step (same frames, tracks, noise), the
same training losses, and one clear error for a cache of another VAE or a changed shard."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ic_model.config import TrainConfig, save_json
from ic_model.models import sd15
from ic_model.models.codec import encode_video
from ic_model.training.data import ClipStream
from ic_model.training.latent_cache import (
    LatentCacheError,
    cache_run_latents,
    check_cache,
    load_run_vae,
)
from ic_model.training.loop import train_stage


@pytest.fixture(scope="module")
def sd15_run(tmp_path_factory, mini_sd15_weights):
    """An sd15 run of the mini networks (SD 1.5's block layout at minimal widths)."""
    cfg = sd15.mini_config(**mini_sd15_weights)
    run = tmp_path_factory.mktemp("sd15_cache") / "run"
    save_json(run / "config.json", cfg.to_dict())
    return run, cfg


@pytest.fixture(scope="module")
def cache(sd15_run, training_shards):
    run, _ = sd15_run
    with sd15.mini_architecture():
        stats = cache_run_latents(str(training_shards), run)
    return stats


def _stream(cfg, shards, **kw):
    return ClipStream(str(shards), cfg, batch_size=2, track_mode="sparse", frame_stride=4, seed=3, **kw)


def test_cached_batches_are_the_encoded_frames(sd15_run, training_shards, cache):
    run, cfg = sd15_run
    assert cache["clips"] > 0 and cache["cached"] == cache["shards"]
    assert json.loads((Path(cache["cache"]) / "cache.json").read_text())["width"] == cfg.width
    with sd15.mini_architecture():
        vae, _ = load_run_vae(run)
    plain, cached = iter(_stream(cfg, training_shards)), iter(_stream(cfg, training_shards, latent_cache=cache["cache"]))
    for _ in range(3):
        a, b = next(plain), next(cached)
        assert b.pixels is None and a.keys == b.keys
        assert torch.equal(a.frame_indices, b.frame_indices) and torch.equal(a.flow, b.flow)
        with torch.no_grad():
            encoded = encode_video(vae, a.pixels)
        # Each frame is encoded alone: only the convolution kernels' batch size differs.
        torch.testing.assert_close(b.latents, encoded, rtol=1e-5, atol=1e-5)
    # A stream that has opened cache files still goes to DataLoader workers (they reopen them).
    stream = _stream(cfg, training_shards, latent_cache=cache["cache"])
    first = next(iter(stream))
    again = next(iter(pickle.loads(pickle.dumps(stream))))
    assert torch.equal(first.latents, again.latents)


def test_a_stage_trains_the_same_from_the_cache(sd15_run, training_shards, cache, tmp_path):
    run, _ = sd15_run
    losses = {}
    for name, option in (("encoded", ""), ("cached", cache["cache"])):
        target = tmp_path / name
        shutil.copytree(run, target)
        train_cfg = TrainConfig(steps=2, batch_size=1, log_every=1, save_every=1000, frame_stride=4, seed=1,
                                gradient_checkpointing=False, num_workers=0, report_to="none", latent_cache=option)
        with sd15.mini_architecture():
            losses[name] = train_stage("dense", str(training_shards), target, train_cfg)["final_loss"]
    assert np.isclose(losses["cached"], losses["encoded"], rtol=1e-4), losses


def test_a_cache_of_another_vae_or_a_changed_shard_is_one_clear_error(sd15_run, training_shards, cache, tmp_path):
    run, cfg = sd15_run
    with sd15.mini_architecture():
        vae, _ = load_run_vae(run)
        check_cache(cache["cache"], vae, cfg)  # its own VAE passes
        with torch.no_grad():
            next(vae.parameters()).add_(0.1)
        with pytest.raises(LatentCacheError, match="another VAE"):
            check_cache(cache["cache"], vae, cfg)
    shards = tmp_path / "shards"
    shutil.copytree(training_shards, shards)  # new files: the cache knows none of them
    with pytest.raises(LatentCacheError, match="rerun `ic cache-latents`"):
        next(iter(_stream(cfg, shards, latent_cache=cache["cache"])))
    # Found before training starts, whichever shards a step would draw first.
    with sd15.mini_architecture():
        vae, _ = load_run_vae(run)
        check_cache(cache["cache"], vae, cfg, training_shards)  # every shard it was built from
        with pytest.raises(LatentCacheError, match=r"has no file for \d+ of the \d+ shards \(new or changed since"):
            check_cache(cache["cache"], vae, cfg, shards)


def test_a_corrupt_clip_stops_the_cache_naming_it_and_keeps_the_shards_before_it(sd15_run, training_shards, tmp_path):
    import io
    import tarfile

    from ic_data.shards import shard_paths
    from ic_model.training.latent_cache import build_latent_cache, shard_cache_file

    run, cfg = sd15_run
    bad = tmp_path / "zz-bad.tar"
    with tarfile.open(bad, "w") as tar:
        payload = b"not an mp4 at all"
        info = tarfile.TarInfo("clip7.mp4")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    good = shard_paths(str(training_shards))[0]
    with sd15.mini_architecture():
        vae, _ = load_run_vae(run)
        with pytest.raises(LatentCacheError, match="sample 'clip7': undecodable mp4"):
            build_latent_cache([good, str(bad)], vae, cfg, tmp_path / "cache")
    assert shard_cache_file(tmp_path / "cache", good).is_file()
    assert not shard_cache_file(tmp_path / "cache", bad).exists()


def test_a_damaged_shard_stops_the_cache_in_one_line_naming_it(sd15_run, training_shards, tmp_path):
    from ic_data.errors import ShardError
    from ic_data.shards import shard_paths
    from ic_model.training.latent_cache import build_latent_cache

    run, cfg = sd15_run
    data = Path(shard_paths(str(training_shards))[0]).read_bytes()
    bad = tmp_path / "cut.tar"
    bad.write_bytes(data[: len(data) // 2])
    with sd15.mini_architecture():
        vae, _ = load_run_vae(run)
        with pytest.raises(ShardError) as caught:
            build_latent_cache([str(bad)], vae, cfg, tmp_path / "cache")
    assert str(caught.value) == f"shard {bad}: not a readable tar file (ReadError: unexpected end of data)"


def test_a_damaged_cache_file_is_one_error_naming_it(training_shards, cache, tmp_path):
    from ic_data.shards import shard_paths
    from ic_model.training.latent_cache import LatentCacheReader, shard_cache_file

    copy = tmp_path / "cache"
    shutil.copytree(cache["cache"], copy)
    shard = shard_paths(str(training_shards))[0]
    damaged = shard_cache_file(copy, shard)
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(LatentCacheError, match=f"^{damaged}: not a readable safetensors file .*rerun `ic cache-latents`"):
        LatentCacheReader(copy).clip(shard, "any")


def test_ic_cache_latents_is_resumable_and_checks_its_input(prefect_api, sd15_run, training_shards, cache, capsys,
                                                            tmp_path):
    from flows import cli

    run, _ = sd15_run
    with sd15.mini_architecture():
        assert cli.main(["cache-latents", "--shards", str(training_shards), "--run", str(run)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cache"] == cache["cache"] and result["skipped"] == result["shards"] and result["cached"] == 0
    assert cli.main(["cache-latents", "--shards", str(tmp_path / "none"), "--run", str(tmp_path / "norun")]) == 2
    err = capsys.readouterr().err
    assert "--shards" in err and "--run" in err and "Traceback" not in err


def test_a_run_with_the_weightless_space_to_depth_codec_caches_too(training_shards, tmp_path):
    """The codec the tiny demo uses has no parameters (it was a StopIteration traceback); its
    cache is keyed by its settings, so factors 4 and 8 do not share one."""
    from ic_model.config import tiny_config
    from ic_model.training.latent_cache import cache_info, vae_fingerprint

    runs = {}
    for factor in (4, 8):
        cfg = tiny_config(codec="space_to_depth", space_to_depth_factor=factor, num_frames=8)
        run = tmp_path / f"run{factor}"
        save_json(run / "config.json", cfg.to_dict())
        vae, _ = load_run_vae(run)
        runs[factor] = (run, cfg, vae_fingerprint(vae))
        assert cache_info(vae, cfg)["dtype"] == "float32"
    assert runs[4][2] != runs[8][2]
    run, cfg, _ = runs[4]
    stats = cache_run_latents(str(training_shards), run)
    assert stats["clips"] > 0 and stats["cached"] == stats["shards"]
    plain = next(iter(_stream(cfg, training_shards)))
    cached = next(iter(_stream(cfg, training_shards, latent_cache=stats["cache"])))
    vae, _ = load_run_vae(run)
    torch.testing.assert_close(cached.latents, encode_video(vae, plain.pixels), rtol=0, atol=1e-6)


@pytest.mark.parametrize("content, says", [('{"vae_sha', "not a readable JSON file"),
                                           ("[1, 2]", "not a latent cache's info")])
def test_a_damaged_cache_info_is_one_error_naming_it(sd15_run, cache, tmp_path, content, says):
    """Cut short (the command stopped while writing it, before it was written atomically) or
    not an object: before, a bare JSONDecodeError or an AttributeError."""
    from ic_model.training.latent_cache import CACHE_INFO, build_latent_cache

    run, cfg = sd15_run
    copy = tmp_path / "cache"
    shutil.copytree(cache["cache"], copy)
    (copy / CACHE_INFO).write_text(content)
    with sd15.mini_architecture():
        vae, _ = load_run_vae(run)
        for attempt in (lambda: check_cache(copy, vae, cfg), lambda: build_latent_cache([], vae, cfg, copy)):
            with pytest.raises(LatentCacheError) as err:
                attempt()
            assert str(err.value).startswith(f"{copy / CACHE_INFO}") and says in str(err.value)
            assert str(err.value).endswith(f"delete {copy} and build the cache again")
