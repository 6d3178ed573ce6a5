"""Reading and writing the weight files a run holds (safetensors: no code runs on load): reads
fail with one error that names a damaged or missing file instead of the library's bare message;
writes are atomic and leave files as readable as the umask allows (safetensors 0.8 makes 0600)."""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ic_data.errors import BadInputError


class WeightsFileError(BadInputError):
    """A weights file is missing, truncated or not safetensors."""


def pickle_refusal(error: BaseException) -> str | None:
    """What ``torch.load(weights_only=True)`` refused, from ``error`` or its causes: the line that
    names it ("Unsupported global: GLOBAL builtins.print …", "Unsupported operand 35"), without
    torch's advice around it to turn the weights-only unpickler off or to allow-list the object,
    which is never passed on. None where no such refusal is in the chain."""
    for _ in range(20):
        if error is None:
            break
        for line in str(error).splitlines():
            if "unsupported" in line.lower():
                return line.strip().removeprefix("WeightsUnpickler error:").strip().split(". Please")[0].rstrip(".")
        error = error.__cause__ or error.__context__
    return None


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, on the CPU."""
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from None  # its message names the cause


def _unreadable(path: str | os.PathLike, err: Exception) -> WeightsFileError:
    """What is wrong with a weights file safetensors could not open: its errors say "No such
    file or directory" for any file it cannot open (one without read permission, too)."""
    if not os.path.lexists(path):
        return WeightsFileError(f"{path}: no such weights file")
    try:
        with open(path, "rb"):
            pass
    except OSError as cause:
        return WeightsFileError(f"{path}: cannot read the weights file ({cause.strerror or cause})")
    return WeightsFileError(f"{path}: not a readable safetensors file ({err})")


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (``safetensors.torch.load_file`` with ``WeightsFileError``)."""
    return read_safetensors(path)[0]


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (0644 under 022)."""
    try:
        with open("/proc/self/status") as status:  # Linux: reads the umask without changing it
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` atomically (``PATH.tmp`` + ``os.replace``), creating its
    folder; the file gets the mode any new file would (not the 0600 safetensors 0.8 gives it)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written file left beside the old one
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
