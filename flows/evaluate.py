"""The `evaluate` flow (deployments `evaluate/camera`, `evaluate/object`): appendix C.2."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.states import Failed
from pydantic import Field

from ic_model.evaluation.evalsets import eval_set_name
from ic_model.evaluation.evaluate import EvalSettings
from tasks.inference import evaluate_task, publish_evaluation


@flow(name="evaluate", log_prints=True)
def evaluate(
    set_name: str,
    run: str,
    out: str | None = None,
    reference: str | None = None,
    images: str | None = None,
    steps: Annotated[int, Field(ge=1)] = 25,
    guidance_scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 8.5,
    trajs_scale: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0,
    ablation: bool = False,
    seed: Annotated[int, Field(ge=0)] = 0,
    tracker: Literal["lk", "cotracker"] = "lk",
    max_reference: Annotated[int, Field(ge=2)] = 5000,
    device: str = "cpu",
    mode: Literal["camera", "object", "none", "base"] | None = None,
    max_cases: Annotated[int | None, Field(ge=1)] = None,
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32",
    negative_prompt: str = "",
) -> dict:
    """Generate the set's cases (fixed seeds) and compute CamMC/ObjMC, plus FID and FVD against
    ``reference`` shards when given; ``ablation`` sweeps λ_trajs on an object set. ``set_name``:
    ``camera`` or ``object`` (the paper's 10 cases each) or the path of a set file of your own
    (its format: ``ic_model.evaluation.evalsets``).

    ``mode`` overrides the set's own adapter: ``base`` (motion ControlNet off) and ``none`` (no
    LoRA) are the baselines, ``camera`` on the object set is Figure 6's comparison."""
    name = eval_set_name(set_name)
    out = out or str(Path(run) / "eval" / (name if mode in (None, name) else f"{name}-{mode}"))
    settings = EvalSettings(steps=steps, guidance_scale=guidance_scale, trajs_scale=trajs_scale, seed=seed,
                            tracker=tracker, images=images, reference=reference, max_reference=max_reference,
                            ablation=ablation, mode=mode, max_cases=max_cases, negative_prompt=negative_prompt)
    state = evaluate_task(run, set_name, out, settings, device, dtype=dtype, return_state=True)
    if not state.is_completed():  # e.g. an unreadable image or reference shard, named in the message
        return Failed(message=state.message)
    metrics = state.result()
    publish_evaluation(metrics, out)
    metric = "CamMC" if metrics["kind"] == "camera" else "ObjMC"
    get_run_logger().info("%s: %s = %s px, FID %s, FVD %s → %s/metrics.json", name, metric, metrics[metric],
                          metrics.get("FID"), metrics.get("FVD"), out)
    return {k: v for k, v in metrics.items() if k != "cases"}
