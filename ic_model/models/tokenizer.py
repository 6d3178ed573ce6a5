"""The real CLIP BPE tokenizer, built offline.

`open_clip_torch` ships OpenAI's `bpe_simple_vocab_16e6.txt.gz` inside its wheel. The vocabulary
is fully determined by that merge list (byte symbols, their end-of-word forms, one token per
merge, then the two special tokens), so we rebuild the `vocab.json`/`merges.txt` pair that
transformers' `CLIPTokenizer` reads — the same ids as the hub's `openai/clip-vit-large-patch14`.
"""
from __future__ import annotations

import functools
import gzip
import json
import tempfile
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

# OpenAI CLIP keeps the first 49152 − 256 − 2 merges (vocabulary size 49408).
NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character map."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def bpe_vocab_path() -> Path:
    """The merge list shipped by open_clip_torch."""
    try:
        path = resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    except ModuleNotFoundError as exc:  # pragma: no cover - dependency is declared
        raise ModuleNotFoundError(
            "open_clip_torch is needed for the CLIP BPE vocabulary: pip install open_clip_torch"
        ) from exc
    return Path(str(path))


def write_clip_tokenizer_files(directory: str | Path) -> Path:
    """Write `vocab.json` and `merges.txt` for transformers' CLIPTokenizer into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory


@functools.lru_cache(maxsize=1)
def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """CLIP ViT-L/14's tokenizer (49408 tokens, pad = end-of-text), with no network access."""
    with tempfile.TemporaryDirectory(prefix="ic-clip-bpe-") as tmp:
        write_clip_tokenizer_files(tmp)
        # from_pretrained reads vocab.json/merges.txt in transformers 4.x and 5.x alike.
        return CLIPTokenizer.from_pretrained(
            tmp, model_max_length=max_length, pad_token="<|endoftext|>", local_files_only=True
        )


def caption_ids(tokenizer, captions, max_length: int):
    """(N, max_length) token ids for ``captions``: padded to ``max_length`` and truncated, as the
    text encoder takes them in training, inference and the probes alike."""
    return tokenizer(
        list(captions), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids


__all__ = ["bpe_vocab_path", "caption_ids", "clip_tokenizer", "write_clip_tokenizer_files"]
