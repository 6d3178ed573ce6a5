"""The trajectories a user draws by clicking, their picture, and the JSON `ic generate` reads.

Points are kept in display pixels (the 384×256 model view the user clicks on). Export maps them
to the original image's pixels, so ``ic generate --image ORIGINAL --trajectories exported.json``
gives the model exactly the tracks that were drawn; import is the inverse.
"""
from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field

import cv2
import numpy as np

from ic_data.preview import TRACK_COLOURS, draw_tracks
from ic_data.trajectories import MAX_TRACK_POINTS, require_in_view, user_tracks_to_array, validate_trajectories
from ic_model.pipelines.image_conductor import GENERATE_MAX_UPSCALE

from .model_view import DISPLAY_HEIGHT, DISPLAY_WIDTH, ModelView

MAX_TRACKS = 8
JSON_DECIMALS = 6  # 1e-6 source pixels: far below anything the model can see


class DrawingError(ValueError):
    """A click or an import the drawing cannot take; the message is shown to the user."""


@dataclass
class TrajectoryDrawing:
    """Tracks of [x, y] display points. A click extends the open track or starts one."""

    bounds: tuple[float, float, float, float]  # (x0, y0, x1, y1) where a point may go
    tracks: list[list[tuple[float, float]]] = field(default_factory=list)
    open: bool = False  # the last track takes the next click
    still_next: bool = False  # the next click is a one-point (still) track
    max_tracks: int = MAX_TRACKS

    def click(self, x: float, y: float) -> None:
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) for v in (x, y)):
            raise DrawingError(f"a click at ({x!r}, {y!r}) is not a point of the image; nothing was added")
        x0, y0, x1, y1 = self.bounds
        point = (float(np.clip(x, x0, x1)), float(np.clip(y, y0, y1)))
        if self.open and self.tracks and not self.still_next:
            if len(self.tracks[-1]) >= MAX_TRACK_POINTS:
                raise DrawingError(f"a trajectory has at most {MAX_TRACK_POINTS} points; "
                                   "start a new one or undo")
            self.tracks[-1].append(point)
            return
        if len(self.tracks) >= self.max_tracks:
            self.still_next = False
            raise DrawingError(f"at most {self.max_tracks} trajectories; undo or clear to draw another")
        self.tracks.append([point])
        self.open = not self.still_next
        self.still_next = False

    def new_track(self) -> None:
        """Close the open track: the next click starts another one."""
        self.open = False
        self.still_next = False

    def still_anchor(self) -> None:
        """The next click places a single point that stays put (a still anchor: the official
        demo's stationary point, moving 1 pixel of the 384×256 frame each way over the clip)."""
        self.open = False
        self.still_next = True

    def undo(self) -> None:
        """Take back the last point (a track left without points goes away)."""
        if self.still_next:
            self.still_next = False
            return
        if not self.tracks:
            return
        self.tracks[-1].pop()
        if self.tracks[-1]:
            self.open = True  # keep extending the track being corrected
        else:
            self.tracks.pop()
            self.open = False

    def clear(self) -> None:
        self.tracks, self.open, self.still_next = [], False, False

    # --- the three spaces -------------------------------------------------------------------

    def to_source(self, view: ModelView) -> list[list[list[float]]]:
        """The tracks in the original image's pixels: the JSON `ic generate` reads."""
        w, h = view.source_size
        out = []
        for track in self.tracks:
            src = np.clip(view.display_to_source(np.array(track, np.float64)), 0.0, [w - 1.0, h - 1.0])
            out.append(np.round(src, JSON_DECIMALS).tolist())
        return out

    def to_json(self, view: ModelView) -> str:
        return json.dumps(self.to_source(view))

    def load_source(self, tracks, view: ModelView) -> None:
        """Replace the drawing with parsed JSON of source-pixel tracks (validated as `ic generate`
        does; a TrajectoryError names the track and point)."""
        w, h = view.source_size
        checked = validate_trajectories(tracks, w, h, max_tracks=self.max_tracks)
        require_in_view(checked, w, h, GENERATE_MAX_UPSCALE)  # where generation will look, now
        self.tracks = [[tuple(p) for p in view.source_to_display(t).tolist()] for t in checked]
        self.open, self.still_next = False, False

    def model_tracks(self, view: ModelView, num_frames: int) -> np.ndarray:
        """float32 (num_frames, N, 2) in model pixels: what the pipeline will be given."""
        if not self.tracks:
            raise DrawingError("no trajectories drawn")
        to_model = np.array(view.model_size, np.float64) / (DISPLAY_WIDTH, DISPLAY_HEIGHT)  # the official +1 px at 384×256
        return user_tracks_to_array([view.display_to_model(np.array(t)) for t in self.tracks], num_frames, to_model)

    # --- the picture ------------------------------------------------------------------------

    def render(self, view: ModelView, num_frames: int) -> np.ndarray:
        """The model view with each track as the model will follow it: the path through its
        ``num_frames`` positions ending in an arrow, the clicked points as dots, still anchors
        ringed."""
        image = view.display_image.copy()
        if not self.tracks:
            return image
        # Resampled in display pixels: the same PCHIP path, scaled, as in model pixels.
        paths = user_tracks_to_array([np.array(t) for t in self.tracks], num_frames)
        image = draw_tracks(image, paths, np.arange(len(self.tracks)))
        for k, track in enumerate(self.tracks):
            colour = TRACK_COLOURS[k % len(TRACK_COLOURS)]
            pts = np.round(np.array(track) * 4).astype(np.int32)  # 2 fractional bits, as draw_tracks
            for p in pts[1:]:
                cv2.circle(image, tuple(p), 2 * 4, colour, -1, cv2.LINE_AA, shift=2)
            if len(track) == 1:
                cv2.circle(image, tuple(pts[0]), 7 * 4, colour, 2, cv2.LINE_AA, shift=2)
        return image

    def summary(self) -> str:
        if not self.tracks:
            hint = "Click on the image to start a trajectory."
        elif self.still_next:
            hint = "Next click: a still anchor."
        elif self.open:
            hint = f"Clicks extend trajectory {len(self.tracks)}; *New trajectory* starts another."
        else:
            hint = "Next click starts a new trajectory."
        if self.tracks:
            last = len(self.tracks) - 1
            kinds = ", ".join(
                f"{i + 1}: still" if len(t) == 1 and not (self.open and i == last)
                else f"{i + 1}: {len(t)} point{'s' if len(t) > 1 else ''}"
                for i, t in enumerate(self.tracks)
            )
            return f"{len(self.tracks)}/{self.max_tracks} trajectories ({kinds}). {hint}"
        return hint


__all__ = ["DrawingError", "MAX_TRACKS", "TrajectoryDrawing"]
