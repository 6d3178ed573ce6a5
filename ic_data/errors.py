"""Typed errors.

Curation errors carry a short machine-readable ``reason`` that lands in the manifest's ``reason``
column, so a failed or rejected video is a row with an explanation, never a crash of the batch.
``BadInputError`` is the rest of the input's faults: a flow ends Failed with its one line.
"""
from __future__ import annotations


class CurationError(Exception):
    """Base class: a video could not go through a stage. ``reason`` is a stable snake_case code."""

    reason = "curation_error"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:  # "reason: message" reads well in a manifest and a log line
        return f"{self.reason}: {super().__str__()}"


class VideoDecodeError(CurationError):
    """The file is missing, empty, truncated, not a video, or no decoder could read it."""

    reason = "decode_error"


class DecodeTimeout(VideoDecodeError):
    """A decoder hung on the file past its time limit."""

    reason = "decode_timeout"


class VideoTooShort(CurationError):
    """Not enough frames (or no scene long enough) for a clip."""

    reason = "too_short"


class VideoTooSmall(CurationError):
    """The resolution is too low to crop a clip without heavy upscaling."""

    reason = "too_small"


class WorkerCrashed(CurationError):
    """The worker process handling the video died (a native crash, e.g. in a decoder)."""

    reason = "worker_crashed"


class WorkerStartError(RuntimeError):
    """The curation's worker processes die before they can run anything: not a property of any
    video, so the run stops with this rather than failing every video as ``worker_crashed``."""


class MissingWeightsError(RuntimeError):
    """A pretrained network was requested but its local weights are not configured or absent.

    The message names the setting (environment variable or argument) to fill.
    """


class BadInputError(ValueError):
    """Input the user gave cannot be used (a damaged shard, an unreadable image, an empty set).
    The message names the input and the problem in one line, so the flow that meets it ends
    Failed with that line alone: there is no bug to trace back.

    The message is one string so that a DataLoader worker can re-raise it in the main process
    with its type intact. The DataLoader prepends the worker's traceback to it; that is dropped
    again here, so the error reads the same with any number of workers.
    """

    def __init__(self, message: str):
        name = f"\n{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and name in message:  # torch's ExceptionWrapper.reraise
            message = message[message.rindex(name) + len(name):].strip()
        super().__init__(message)


class MissingInputError(BadInputError, FileNotFoundError):
    """A file or folder the user named is not there (or holds nothing usable): a bad input, so a
    flow started from a deployment's Run form ends Failed with its line, and still a
    ``FileNotFoundError`` for code that catches that."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno …]" form
        return str(self.args[0]) if self.args else ""


class ShardError(BadInputError):
    """A WebDataset shard breaks the data contract: not a readable tar, a sample lacking members,
    or no sample a stage can use. Curated data never does: it fails loudly."""


class TrajectoryError(BadInputError):
    """A user trajectory (or a tracks array) is malformed: wrong type, shape, NaN, out of bounds."""
