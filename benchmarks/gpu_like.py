"""Run a Python script or module here with only what the lent GPU machine can import.

    python benchmarks/gpu_like.py -m ic_demo.chain --scale test --out /tmp/x
    python benchmarks/gpu_like.py benchmarks/gpu_check.py --dry-run

The lent H200 box has no network: what its image lacks must travel as wheels
(``benchmarks/gpu_wheels.sh``). A module missing there costs a whole device call to find out, so
this runner finds it here first: a module whose distribution is neither in the box's package list
(as read on 2026-11-17) nor among the wheels we carry is not found, as there: its import fails with
ModuleNotFoundError and optional imports take their fallbacks. What the box's own packages import is
let through (here they are other versions, with other dependencies). Versions are not checked
(the box's torch is 2.11, its transformers 5.x): only whether a package is there at all.

Processes the script starts (curation's spawned workers, ``--num-processes`` children) are held to
the same list: a ``sitecustomize`` on their PYTHONPATH installs the finder before their first import.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import runpy
import sys
from importlib.machinery import PathFinder

# The box's image ('cuda'), as the device tool's KINDS.md lists it.
ON_THE_BOX = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
# This project, and what cv2 is called here (the box has the headless build of the same module).
SAME_AS_THERE = {"image-conductor": "image-conductor", "opencv-python": "opencv-python-headless"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carried_wheels() -> set[str]:
    """The distributions benchmarks/gpu_wheels.sh downloads (its NAME==VERSION arguments)."""
    from pathlib import Path

    text = (Path(__file__).with_name("gpu_wheels.sh")).read_text()
    return {norm(m) for m in re.findall(r"\b([A-Za-z][A-Za-z0-9_.-]*)==[0-9]", text)}


def allowed() -> set[str]:
    return {norm(n) for n in ON_THE_BOX.split()} | carried_wheels() | set(SAME_AS_THERE.values())


class NotOnTheBox:
    """Python's path finder, blind to modules of distributions the box would not have: for them an
    import fails and ``importlib.util.find_spec`` answers None, as where they are not installed."""

    def __init__(self, allowed_dists: set[str]):
        self.owners = {m: {SAME_AS_THERE.get(norm(d), norm(d)) for d in ds}
                       for m, ds in md.packages_distributions().items()}
        self.allowed = allowed_dists
        self.box = {norm(n) for n in ON_THE_BOX.split()} | {"opencv-python-headless"}
        self.ours = carried_wheels() | {"image-conductor"}
        self.refused: set[str] = set()
        self.through_box: set[str] = set()

    def invalidate_caches(self) -> None:
        PathFinder.invalidate_caches()

    def find_distributions(self, *args, **kwargs):  # package metadata: as here
        return PathFinder.find_distributions(*args, **kwargs)

    def find_spec(self, name, path=None, target=None):
        if self.visible(name):
            return PathFinder.find_spec(name, path, target)
        return None

    def visible(self, name: str) -> bool:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in sys.builtin_module_names or (top != name and top in sys.modules):
            return True  # the standard library, or a submodule of a package already admitted
        owners = self.owners.get(top)
        if owners is None or owners & self.allowed:  # local code (the project), or there on the box
            return True
        if self.imported_by_the_box():  # here, a dependency of our version of a box package
            self.through_box.add(top)
            return True
        self.refused.add(f"{top} ({', '.join(sorted(owners))}), asked for by {self.importer()}")
        return False

    @staticmethod
    def importer() -> str:
        """The module whose code asked for this import (import machinery and this file skipped)."""
        frame = sys._getframe(1)
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if not (name.startswith(("importlib", "_frozen_importlib")) or frame.f_code.co_filename == __file__):
                return name
            frame = frame.f_back
        return "__main__"

    def imported_by_the_box(self) -> bool:
        """An import made by a package the box has in its own version (not ours, not a carried wheel):
        its dependencies there match that version, not the one installed here."""
        top = self.importer().split(".")[0]
        owners = self.owners.get(top, set())
        return top in self.through_box or (bool(owners) and owners <= self.box and not (owners & self.ours))


def install() -> NotOnTheBox:
    """Put the finder in place of Python's path finder in this process."""
    finder = NotOnTheBox(allowed())
    sys.meta_path[:] = [finder if f is PathFinder else f for f in sys.meta_path]
    return finder


# Run by every Python process started with the folder below on its PYTHONPATH (site imports
# ``sitecustomize`` at start-up): the same finder, and its refusals said when the process ends.
_CHILD_HOOK = """\
import atexit, importlib.util, os, sys
_spec = importlib.util.spec_from_file_location("_gpu_like", {path!r})
_gpu_like = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gpu_like)
_finder = _gpu_like.install()
atexit.register(lambda: _finder.refused and sys.stderr.write(  # one write: workers end together
    f"gpu_like: refused in process {{os.getpid()}} (absent on the box): " + "; ".join(sorted(_finder.refused)) + "\\n"))
"""


def hold_children() -> str:
    """A folder with the ``sitecustomize`` above, put first on PYTHONPATH for every child process."""
    import os
    import tempfile

    folder = tempfile.mkdtemp(prefix="gpu_like-")
    with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
        f.write(_CHILD_HOOK.format(path=os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join([folder, *filter(None, [os.environ.get("PYTHONPATH")])])
    return folder


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    import shutil

    finder = install()
    children = hold_children()
    args = sys.argv[1:]
    code = 0
    try:
        if args[0] == "-m":
            sys.argv = args[1:]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = args
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
    finally:
        shutil.rmtree(children, ignore_errors=True)
        if finder.refused:
            print("gpu_like: refused (absent on the box): " + "; ".join(sorted(finder.refused)), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
