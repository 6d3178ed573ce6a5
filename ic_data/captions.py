"""Clip captions: WebVid's own captions when the CSV is available, BLIP-2 otherwise.

The paper captions clips by describing frames taken at intervals and concatenating the
descriptions; ``Blip2Captioner`` does exactly that from a local BLIP-2 checkpoint (no downloads).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from ic_data.errors import BadInputError, MissingWeightsError

__all__ = ["BLIP2_PATH_ENV", "Blip2Captioner", "CaptionsError", "caption_for", "load_webvid_captions",
           "webvid_csv_header"]

BLIP2_PATH_ENV = "IC_BLIP2_PATH"

_WEBVID_COLUMNS = ("videoid", "name")


class CaptionsError(BadInputError):
    """A WebVid captions CSV that cannot be read: not UTF-8, malformed CSV, missing columns."""


def load_webvid_captions(csv_path: str | os.PathLike, only: Collection[str] | None = None) -> dict[str, str]:
    """Map WebVid ``videoid`` → caption (``name`` column) from a WebVid results CSV.

    ``only``: keep just these video ids. The CSV is read row by row, so memory follows the
    selection, not WebVid's 10M rows (gigabytes as a dict). Other columns (``contentUrl``,
    ``duration``, ``page_dir``, …) are ignored. Raises :class:`CaptionsError` (a
    ``ValueError``) naming the file and the line where it is not UTF-8 or not well-formed CSV (an
    unclosed quote would swallow the rows after it), or the missing columns if ``videoid`` or
    ``name`` is absent.
    """
    try:
        handle = open(csv_path, newline="", encoding="utf-8")
    except OSError as err:  # missing, a folder, no permission
        raise CaptionsError(f"{csv_path}: cannot read the captions CSV ({err.strerror or err})") from None
    with handle:
        reader = csv.DictReader(handle, strict=True)
        captions: dict[str, str] = {}
        line = 0  # the last line read whole
        try:
            reader.fieldnames = _checked_header(reader, csv_path)
            line = reader.line_num
            for record in reader:
                line = reader.line_num
                video_id = (record.get("videoid") or "").strip()
                if video_id and (only is None or video_id in only):
                    captions[video_id] = (record.get("name") or "").strip()
        except UnicodeDecodeError as err:
            # Text is decoded ahead of the rows, so the bad byte lies somewhere after this line.
            raise CaptionsError(f"{csv_path}: not UTF-8 text ({err.reason}, past line {line})") from None
        except csv.Error as err:  # an unclosed quote, a field past csv's size limit
            raise CaptionsError(f"{csv_path}: the row after line {line} is not well-formed CSV ({err})") from None
    return captions


def webvid_csv_header(csv_path: str | os.PathLike) -> list[str]:
    """The header of a WebVid CSV, read without the rows (the 10M file is gigabytes); raises
    ``ValueError`` as ``load_webvid_captions`` does when ``videoid`` or ``name`` is missing."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return _checked_header(csv.DictReader(handle), csv_path)


def _checked_header(reader: csv.DictReader, csv_path: str | os.PathLike) -> list[str]:
    header = [column.strip() for column in (reader.fieldnames or [])]
    missing = [column for column in _WEBVID_COLUMNS if column not in header]
    if missing:
        raise CaptionsError(f"{csv_path}: WebVid CSV lacks columns {missing} (found {header})")
    return header


def caption_for(video_path: str | os.PathLike, captions: dict[str, str]) -> str | None:
    """The caption whose ``videoid`` is the file's stem (``…/1066678825.mp4`` → ``"1066678825"``)."""
    return captions.get(Path(video_path).stem)


def _evenly_spaced(num_frames: int, count: int) -> list[int]:
    if num_frames < 1:
        raise ValueError("cannot caption an empty clip")
    count = max(1, min(count, num_frames))
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, count)})


class Blip2Captioner:
    """Caption a clip with BLIP-2 from a local checkpoint folder (e.g. Salesforce/blip2-opt-2.7b).

    The folder comes from ``model_path`` or the ``IC_BLIP2_PATH`` environment variable and is
    read with ``local_files_only=True``. Weights load on the first ``caption`` call, so building
    a captioner is cheap and fails early only when the folder is not configured or missing.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        device: str = "cpu",
        frames_per_clip: int = 3,
        max_new_tokens: int = 30,
    ):
        path = model_path if model_path is not None else os.environ.get(BLIP2_PATH_ENV)
        if not path or not os.path.isdir(path):
            where = f"{path!r} is not a directory" if path else "no path is configured"
            raise MissingWeightsError(
                f"BLIP-2 captioning needs local weights, but {where}. Set {BLIP2_PATH_ENV} (or pass "
                f"model_path) to a local transformers folder of a BLIP-2 checkpoint, e.g. "
                f"Salesforce/blip2-opt-2.7b saved with save_pretrained; nothing is downloaded "
                f"(or curate without captions: --captioner none)."
            )
        if frames_per_clip < 1:
            raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
        self.model_path = os.fspath(path)
        self.device = device
        self.frames_per_clip = frames_per_clip
        self.max_new_tokens = max_new_tokens
        self._processor = None
        self._model = None

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        self._processor = Blip2Processor.from_pretrained(self.model_path, local_files_only=True)
        model = Blip2ForConditionalGeneration.from_pretrained(
            self.model_path, local_files_only=True, dtype=dtype
        )
        self._model = model.to(self.device).eval()

    def describe(self, images: np.ndarray) -> list[str]:
        """One greedy BLIP-2 description per uint8 RGB image in ``images`` (K, H, W, 3)."""
        import torch

        self._load()
        inputs = self._processor(images=list(images), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self._model.dtype)
        with torch.inference_mode():
            generated = self._model.generate(
                pixel_values=pixel_values, max_new_tokens=self.max_new_tokens, do_sample=False
            )
        texts = self._processor.batch_decode(generated, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def caption(self, frames: np.ndarray) -> str:
        """Describe ``frames_per_clip`` evenly spaced frames of a (T, H, W, 3) uint8 RGB clip and
        join the distinct descriptions, in frame order, with ``"; "``."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        chosen = frames[_evenly_spaced(len(frames), self.frames_per_clip)]
        distinct: list[str] = []
        for text in self.describe(chosen):
            if text and text not in distinct:
                distinct.append(text)
        return "; ".join(distinct)
