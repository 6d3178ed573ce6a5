"""deployments/prefect.yaml (work pools) offers exactly the deployments `make serve` serves."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prefect")

ROOT = Path(__file__).resolve().parents[1]


def test_the_work_pool_file_and_serve_offer_the_same_deployments():
    from deployments.serve import deployments

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    from_file = set()
    for entry in spec["deployments"]:
        path, function = entry["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        from_file.add((getattr(module, function).name, entry["name"], tuple(sorted((entry.get("parameters") or {}).items()))))
    served = {(d.flow_name, d.name, tuple(sorted((d.parameters or {}).items()))) for d in deployments()}
    assert from_file == served
