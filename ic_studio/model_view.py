"""An image as the model sees it, and the exact pixel maps between the three spaces involved.

- source: the user's image file, any size and aspect ratio (what `ic generate` reads);
- display: the 384×256 curation frame the studio shows and the user clicks on;
- model: ``cfg.width``×``cfg.height`` (384×256 for sd15, 96×64 for the tiny preset).

The resize/crop is :func:`ic_model.pipelines.image_conductor.prepare_image_and_tracks` itself, so the picture and
the maps cannot drift from what generation does. All maps use the pixel-centre convention of
:class:`ic_data.clips.ClipGeometry`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ic_data.clips import CLIP_HEIGHT, CLIP_WIDTH, ClipGeometry, resize_points
from ic_model.config import ModelConfig
from ic_model.pipelines.image_conductor import prepare_image_and_tracks

DISPLAY_WIDTH, DISPLAY_HEIGHT = CLIP_WIDTH, CLIP_HEIGHT


@dataclass
class ModelView:
    source_size: tuple[int, int]  # (width, height) of the original image
    model_size: tuple[int, int]  # (cfg.width, cfg.height)
    geometry: ClipGeometry  # source pixels → display (384×256 clip) pixels
    model_image: np.ndarray  # uint8 (H, W, 3): the conditioning image, exactly
    display_image: np.ndarray  # uint8 (256, 384, 3): model_image enlarged, nearest neighbour

    @classmethod
    def from_image(cls, image: np.ndarray, cfg: ModelConfig) -> "ModelView":
        """``image``: uint8 RGB (H, W, 3) as :func:`ic_model.pipelines.generate.read_image` returns it."""
        h, w = image.shape[:2]
        # Any valid point will do: only the image and the geometry are used.
        prepared = prepare_image_and_tracks(image, [[[0, 0]]], cfg, trajectory_space="model")
        # Nearest neighbour keeps each model pixel a visible block: what you see is what it gets.
        display = cv2.resize(prepared.image, (DISPLAY_WIDTH, DISPLAY_HEIGHT), interpolation=cv2.INTER_NEAREST)
        return cls((w, h), (cfg.width, cfg.height), prepared.geometry, prepared.image, display)

    def display_to_source(self, xy) -> np.ndarray:
        return self.geometry.clip_to_source(np.asarray(xy, np.float64))

    def source_to_display(self, xy) -> np.ndarray:
        return self.geometry.source_to_clip(np.asarray(xy, np.float64))

    def display_to_model(self, xy) -> np.ndarray:
        """The map :func:`prepare_image_and_tracks` applies after source → clip."""
        return resize_points(xy, (DISPLAY_WIDTH, DISPLAY_HEIGHT), self.model_size)

    def display_bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): the display points whose source point lies inside the image.

        Usually the whole frame; an image enlarged to fit has its outermost source pixel
        centres a fraction of a pixel inside the frame's edge, and `ic generate` rejects points
        outside the source image.
        """
        w, h = self.source_size
        lo = self.source_to_display([0.0, 0.0])
        hi = self.source_to_display([w - 1.0, h - 1.0])
        x0, y0 = max(lo[0], 0.0), max(lo[1], 0.0)
        x1, y1 = min(hi[0], DISPLAY_WIDTH - 1.0), min(hi[1], DISPLAY_HEIGHT - 1.0)
        return float(x0), float(y0), float(x1), float(y1)

    def describe(self) -> str:
        w, h = self.source_size
        x0, y0, cw, ch = self.geometry.crop
        sx = self.geometry.scale[0]
        mw, mh = self.model_size
        crop = f"centre crop at ({x0}, {y0})" if (x0 or y0) else "no crop"
        model = f", then to the model's {mw}×{mh}" if (mw, mh) != (DISPLAY_WIDTH, DISPLAY_HEIGHT) else ""
        return f"{w}×{h} image, resized ×{sx:.3g} to cover {cw}×{ch}, {crop}{model}."


__all__ = ["DISPLAY_HEIGHT", "DISPLAY_WIDTH", "ModelView"]
