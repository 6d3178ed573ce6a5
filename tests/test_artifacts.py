"""Markdown artifacts embed images only within a budget (Prefect drops larger events)."""
from __future__ import annotations

import base64
import re

import numpy as np

from tasks.artifacts import Embedder


def test_images_are_embedded_while_the_budget_lasts_then_named(tmp_path):
    rng = np.random.default_rng(0)
    sizes = {"a.gif": 3000, "b.png": 2999, "c.gif": 4000}
    for name, n in sizes.items():
        (tmp_path / name).write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    embed = Embedder(budget=4000 + 4000)  # base64 of 3000 bytes is 4000 characters; of 2999, 4000 too
    a, b, c = (embed.image(tmp_path / name, name) for name in sizes)
    for md, name, mime in ((a, "a.gif", "image/gif"), (b, "b.png", "image/png")):
        data = re.fullmatch(rf"!\[{name}\]\(data:{mime};base64,([A-Za-z0-9+/=]+)\)", md).group(1)
        assert base64.b64decode(data) == (tmp_path / name).read_bytes()
    assert embed.left == 0
    assert "base64" not in c and str(tmp_path / "c.gif") in c and "not embedded" in c
    assert Embedder(budget=5336).fits(tmp_path / "c.gif") and not Embedder(budget=5335).fits(tmp_path / "c.gif")
    assert not Embedder(budget=8000).fits(tmp_path / "a.gif", share=3)  # a third of it is too little
