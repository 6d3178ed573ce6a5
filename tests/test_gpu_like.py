"""benchmarks/gpu_like.py: a rehearsal here sees only what the GPU box can import, in the processes
the script starts as well as in its own."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import importlib.util, multiprocessing, subprocess, sys

def probe(name):
    return importlib.util.find_spec(name) is not None

if __name__ == "__main__":
    print("main", probe("prefect"), probe("numpy"))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        print("spawned", *pool.map(probe, ["prefect", "numpy"]))
    code = "import importlib.util as u; print(u.find_spec('prefect') is not None, u.find_spec('numpy') is not None)"
    print("child", subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
"""


@pytest.mark.skipif(importlib.util.find_spec("prefect") is None, reason="needs prefect installed here to hide it")
def test_packages_absent_on_the_box_are_hidden_in_child_processes_too(tmp_path):
    # Prefect is installed here (the flows need it) and absent on the box; numpy is on both.
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    hooks = tmp_path / "tmp"
    hooks.mkdir()
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_like.py"), str(script)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
                         env={**os.environ, "TMPDIR": str(hooks)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:3] == ["main False True", "spawned False True", "child False True"], run.stdout
    assert "refused (absent on the box): prefect" in run.stderr
    assert not list(hooks.iterdir())  # the children's hook folder is gone once the run ends
