from pathlib import Path

import numpy as np
from PIL import Image

from ic_data import CurationConfig, curate, random_video, write_mp4
from ic_model import ImageConductorPipeline, TrainConfig, generate_to_files, tiny_config, train_stage

work = Path("quickstart_out")

# 1. Videos: WebVid-like (objects and camera move), RealEstate10K-like (camera only), 1-3 shots.
for k, (source, kind) in enumerate([("webvid", "mixed"), ("realestate10k", "camera")]):
    (work / "videos" / source).mkdir(parents=True, exist_ok=True)
    for i in range(4):
        video = random_video(np.random.default_rng([k, i]), kind=kind, vivid=True, object_scale=1.75)
        write_mp4(work / "videos" / source / f"{kind}_{i}.mp4", video.frames, fps=24)

# 2. Curation: cuts, motion filter, 32-frame 384x256 clips, tracks, WebDataset shards + manifest.
shards = {}
for source in ("webvid", "realestate10k"):
    config = CurationConfig(source=source, camera_only=source == "realestate10k", flow="dis", tracker="lk")
    summary = curate(work / "videos" / source, work / "curated" / source, config)
    print(source, summary.counts)
    shards[source] = str(work / "curated" / source / "shards")

# 3. Training: the tiny preset with the demo's toy options, 20 steps per stage.
model_cfg = tiny_config(num_frames=8, codec="space_to_depth", latent_scaling_factor=4.0,
                        image_condition="every_frame", flow_gain=20.0, spatial_attention="first_frame")
run = work / "run"  # one folder per stage; the first stage saves model_cfg as run/config.json
data = {"base": [shards["webvid"], shards["realestate10k"]], "camera": shards["realestate10k"]}
for stage in model_cfg.stages:  # base, dense, sparse, camera, object
    train_cfg = TrainConfig(steps=20, batch_size=2, learning_rate=5e-4, frame_stride=4, save_every=1000)
    result = train_stage(stage, data.get(stage, shards["webvid"]), run, train_cfg, model_cfg)
    print(stage, "loss", result["first_loss"], "->", result["final_loss"])

# 4. Generation: move an object of a new first frame 150 px to the right, camera-free guidance 1.3.
video = random_video(np.random.default_rng(99), kind="mixed", vivid=True, object_scale=1.75)
Image.fromarray(video.frames[0]).save(work / "first_frame.png")
x, y = (float(v) for v in video.shots[0].objects[0].path_px[0])
track = [[x, y], [min(x + 150, 440), y]]  # [x, y] in the image's pixels (480x270; the model sees x 37-441)
pipe = ImageConductorPipeline.from_run(run)  # device="cuda" on a GPU
# CFG 1.0: the tiny text encoder is random and frozen, so captions carry no information.
record = generate_to_files(pipe, work / "first_frame.png", "an object moves right", [track],
                           work / "object.mp4", mode="object", trajs_scale=1.3, guidance_scale=1.0,
                           steps=10, seed=0)
print(record)  # object.mp4, object.gif (trajectory drawn) and object.json
