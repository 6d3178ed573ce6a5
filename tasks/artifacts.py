"""Images embedded in markdown artifacts, within the size the Prefect server publishes.

A markdown artifact's data travels in the event its creation emits, and the server refuses
events over ``PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES`` (1.5 MB by default): it logs "Refusing
to publish event of size …" and the event is lost to the UI's event feed and to automations.
Three curation previews of noise-textured clips (1.64 MB), or four generated videos at 384×256
of detailed footage (a 16-frame GIF of real footage is ≈ 0.3 MB, 0.39 MB as base64), pass it. An
:class:`Embedder` embeds images while its budget lasts and names the file of any past it.
"""
from __future__ import annotations

import base64
from pathlib import Path

# Bytes of base64 image data per artifact: two thirds of the server's default event limit,
# leaving room for the artifact's text and the event's own fields.
EMBED_BUDGET = 1_000_000

_MIME = {".gif": "image/gif", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


class Embedder:
    """Markdown for images, embedded as data URIs while their total stays within ``budget``."""

    def __init__(self, budget: int = EMBED_BUDGET):
        self.left = budget

    @staticmethod
    def encoded_size(path: str | Path) -> int:
        return 4 * -(-Path(path).stat().st_size // 3)

    def fits(self, path: str | Path, share: int = 1) -> bool:
        """Whether ``path`` fits in ``1/share`` of what is left (to leave room for the others)."""
        return self.encoded_size(path) <= self.left // max(1, share)

    def image(self, path: str | Path, title: str) -> str:
        path = Path(path)
        if not self.fits(path):
            return f"*{title}*: `{path}` (not embedded: the artifact would pass Prefect's event size limit)"
        data = base64.b64encode(path.read_bytes()).decode()
        self.left -= len(data)
        return f"![{title}](data:{_MIME.get(path.suffix.lower(), 'image/gif')};base64,{data})"
