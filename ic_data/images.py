"""Reading a still image from an untrusted file: first frames, case images, FID folders.

Pillow, left to itself, identifies a file by its content among every format it has a reader for,
whatever its name, and some of those readers hand the file to an outside program (EPS and PS go
to Ghostscript, an interpreter). A PostScript file named ``photo.png`` would run there. Only the
formats below are ever tried, and an image whose decoded size would take gigabytes (a 400 KB PNG
can declare 12000×12000) is refused before it is decoded.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ic_data.errors import BadInputError

__all__ = ["IMAGE_FORMATS", "IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "open_image", "read_rgb"]

# Pillow's format names; MPO is the JPEG that cameras write with a second (depth/preview) image
# (Pillow 10+ reads it through its JPEG reader, older ones register it apart).
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")
# 100 megapixels (a 12000×8000 photo): 300 MB as 8-bit RGB. Pillow's own guard warns at 89 and
# refuses at 179 megapixels.
MAX_IMAGE_PIXELS = 100_000_000
_NAMES = "JPEG, PNG, WebP, BMP, TIFF, GIF or PPM"
#: The file names taken for those formats where a folder is searched for images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".mpo")


@contextlib.contextmanager
def open_image(path: str | os.PathLike) -> Iterator:
    """The file as a Pillow image, lazily (nothing decoded yet), or one BadInputError: not found,
    not in one of ``IMAGE_FORMATS``, or over ``MAX_IMAGE_PIXELS``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{path} is a folder, not an image")
    if not path.is_file():
        raise BadInputError(f"image not found: {path}")
    Image.init()  # registers every reader: Image.open looks up the named ones without doing it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is judged below
            im = Image.open(path, formats=[f for f in IMAGE_FORMATS if f in Image.OPEN])
    except UnidentifiedImageError as err:
        raise BadInputError(f"{path} is not an image in a format read here ({_NAMES})") from err
    except Image.DecompressionBombError as err:
        raise BadInputError(f"image {path} is over {MAX_IMAGE_PIXELS // 10**6} megapixels; "
                            "downscale it first") from err
    except Exception as err:  # noqa: BLE001 - a damaged header: the file is the problem
        raise BadInputError(f"cannot decode image {path} ({err})") from err
    with im:
        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise BadInputError(f"image {path} is {width}×{height} ({width * height / 1e6:.0f} megapixels), over "
                                f"the {MAX_IMAGE_PIXELS // 10**6} megapixels read here; downscale it first")
        yield im


def _eight_bit(im):
    """A PIL image of 16-bit or float grey (modes ``I;16*``, ``I``, ``F``) as 8-bit ``L`` (``LA``
    where a transparent grey level is set): 16-bit values by their high byte, as OpenCV reads
    them, float ones from 0..1. PIL's own ``convert`` clips them instead (a 16-bit gradient turns
    white). Any other image is returned as it is."""
    from PIL import Image

    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    values = np.asarray(im)
    if im.mode == "F":
        grey = np.rint(np.clip(np.nan_to_num(values.astype(np.float64) * 255.0), 0, 255)).astype(np.uint8)
    else:
        grey = (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    key = im.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return Image.fromarray(np.stack([grey, np.where(values == key, 0, 255).astype(np.uint8)], axis=-1), "LA")
    return Image.fromarray(grey, "L")


def read_rgb(path: str | os.PathLike, notes: list[str] | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3), upright (EXIF orientation applied), decoded whole (a file cut short is
    one BadInputError: OpenCV alone reads it as grey rows with a warning). Opaque images are
    decoded by OpenCV, as video frames are (16-bit ones scaled to 8), or by PIL where this OpenCV
    build lacks the format (OpenCV 4.9 reads no GIF); transparent pixels are shown over white, as a
    viewer shows them (their hidden colour is arbitrary); of an animation or a multi-page file, the
    first frame is read. Both are said in ``notes`` when given."""
    import cv2
    from PIL import Image, ImageOps

    path = Path(path)
    with open_image(path) as im:
        frames = getattr(im, "n_frames", 1)
        has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
        transparent, rgb = False, None
        try:
            im.load()
            if has_alpha:  # an alpha channel or a transparent colour, perhaps on no pixel at all
                rgba = _eight_bit(ImageOps.exif_transpose(im)).convert("RGBA")
                transparent = rgba.getextrema()[3][0] < 255
            if transparent:
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                rgb = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
            elif im.mode == "F":  # OpenCV reads a float image's 0..1 as 0 and 1 of 255
                rgb = np.asarray(_eight_bit(ImageOps.exif_transpose(im)).convert("RGB"), dtype=np.uint8)
        except Exception as err:  # noqa: BLE001 - PIL's many decoder errors: the file is the problem
            raise BadInputError(f"cannot decode image {path} ({err})") from err
    if rgb is None:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        else:  # a format this OpenCV build lacks (OpenCV 4.9 reads no GIF): PIL decoded it above
            try:
                with open_image(path) as im:
                    rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
            except BadInputError:
                raise
            except Exception as err:  # noqa: BLE001 - as above
                raise BadInputError(f"cannot decode image {path} ({err})") from err
    if notes is not None:
        if frames > 1:
            notes.append(f"{path.name} holds {frames} frames or pages: the first is used")
        if transparent:
            notes.append(f"{path.name} has transparent pixels: they are shown over white")
    return np.ascontiguousarray(rgb)
