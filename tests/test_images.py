"""Still images from untrusted files (ic_data.images): only the formats meant, no decompression
bombs, transparency and animations made explicit."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ic_data.errors import BadInputError
from ic_data.images import open_image, read_rgb

POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n/Helvetica findfont 12 scalefont setfont\nshowpage\n"


def test_a_postscript_file_named_png_never_reaches_a_postscript_reader(tmp_path, monkeypatch):
    """Pillow picks a reader by content: a PostScript file under any name went to its EPS reader,
    which hands the file to Ghostscript, an interpreter. Only the listed formats are tried now."""
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self) or 1 / 0)
    for name in ("photo.png", "photo.eps"):
        (tmp_path / name).write_bytes(POSTSCRIPT)
        with pytest.raises(BadInputError, match=rf"{name} is not an image in a format read here \(JPEG, PNG, WebP"):
            read_rgb(tmp_path / name)
    assert opened == []
    with pytest.raises(ZeroDivisionError):  # the guard above is real: left to itself, Pillow goes there
        Image.open(tmp_path / "photo.png")
    assert len(opened) == 1


def test_real_images_in_other_formats_are_named_as_such(tmp_path):
    Image.new("RGB", (32, 24), (10, 200, 30)).save(tmp_path / "a.pcx")
    Image.new("RGB", (32, 24), (10, 200, 30)).save(tmp_path / "a.tga")
    for name in ("a.pcx", "a.tga"):
        with pytest.raises(BadInputError, match="not an image in a format read here"):
            read_rgb(tmp_path / name)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(BadInputError, match="folder.png is a folder, not an image"):
        read_rgb(tmp_path / "folder.png")


def test_an_image_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """A few hundred bytes of PNG can declare 12000×12000 (2.5 GB of memory to decode): refused
    from its header, with its size. Pillow's own guard (a warning, then an error at twice its
    limit) stays silent."""
    import warnings

    import ic_data.images as images

    Image.new("1", (4000, 3000)).save(tmp_path / "big.png")  # 12 megapixels, 2 KB
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 10_000_000)
    with pytest.raises(BadInputError, match=r"big.png is 4000×3000 \(12 megapixels\), over the 10 megapixels"):
        read_rgb(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000_000)  # over twice Pillow's limit: its error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadInputError, match="big.png is over 10 megapixels; downscale it first"):
            read_rgb(tmp_path / "big.png")
        monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 20_000_000)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)  # past Pillow's warning, within ours
        assert read_rgb(tmp_path / "big.png").shape == (3000, 4000, 3)


def test_transparent_pixels_are_shown_over_white_and_said(tmp_path):
    """Their hidden colour is whatever the writer left there (here yellow), not what a viewer
    shows. Half-transparent pixels blend with white."""
    palette = Image.new("P", (8, 4), 1)
    palette.putpalette([255, 255, 0, 0, 0, 255] + [0] * 762)  # 0: yellow, 1: blue
    palette.paste(0, (0, 0, 4, 4))  # the left half yellow, and transparent
    palette.save(tmp_path / "p.png", transparency=0)
    notes: list[str] = []
    rgb = read_rgb(tmp_path / "p.png", notes)
    assert (rgb[:, :4] == 255).all() and (rgb[:, 4:] == [0, 0, 255]).all()
    assert notes == ["p.png has transparent pixels: they are shown over white"]
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # red at half opacity
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    expected = np.array([round((200 * 128 + 255 * 127) / 255), round(255 * 127 / 255), round(255 * 127 / 255)])
    half: list[str] = []
    assert np.abs(read_rgb(tmp_path / "half.png", half).astype(int) - expected).max() <= 1
    assert half == ["half.png has transparent pixels: they are shown over white"]
    Image.new("RGB", (8, 4), (1, 2, 3)).save(tmp_path / "plain.png")
    Image.new("RGBA", (8, 4), (1, 2, 3, 255)).save(tmp_path / "opaque.png")  # a screenshot: alpha, all opaque
    for name in ("plain.png", "opaque.png"):
        plain: list[str] = []
        assert (read_rgb(tmp_path / name, plain) == [1, 2, 3]).all() and plain == []


@pytest.mark.parametrize("name", ["anim.gif", "pages.tiff"])
def test_of_an_animation_or_a_multi_page_file_the_first_frame_is_read_and_said(tmp_path, name):
    red, blue = Image.new("RGB", (16, 8), (255, 0, 0)), Image.new("RGB", (16, 8), (0, 0, 255))
    red.save(tmp_path / name, save_all=True, append_images=[blue])
    notes: list[str] = []
    rgb = read_rgb(tmp_path / name, notes)
    assert (rgb == [255, 0, 0]).all()
    assert notes == [f"{name} holds 2 frames or pages: the first is used"]


@pytest.mark.parametrize("name", ["photo.gif", "photo.png"])
def test_a_format_this_opencv_cannot_read_is_decoded_by_pil(tmp_path, monkeypatch, name):
    """OpenCV 4.9 reads no GIF: what PIL has already checked is decoded by PIL then, pixel for pixel."""
    import cv2

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).quantize(64).convert("RGB"))  # ≤ 256 colours: GIF keeps them
    Image.fromarray(expected).save(tmp_path / name)
    monkeypatch.setattr(cv2, "imread", lambda *args, **kwargs: None)
    assert np.array_equal(read_rgb(tmp_path / name), expected)


def test_sixteen_bit_images_are_scaled_to_eight_bits_not_clipped(tmp_path):
    grey = np.array([[0, 257 * 128, 65535]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb[0, :, 0].tolist() == [0, 128, 255]


def test_open_image_leaves_the_decoding_to_the_caller(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.jpg")
    with open_image(tmp_path / "a.jpg") as im:
        assert im.size == (30, 20) and im.format == "JPEG"


def test_sixteen_bit_grey_with_a_transparent_level_and_float_images_keep_their_tones(tmp_path):
    """PIL's own conversion clips 16-bit and float grey to 255 and 1 (a 16-bit gradient with a
    transparent level turned white, a 0..1 float TIFF black): they read as OpenCV reads the
    opaque 16-bit gradient, the transparent level over white."""
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray(ramp).save(tmp_path / "g16_key.png", transparency=0)
    Image.fromarray((ramp / 65535.0).astype(np.float32), mode="F").save(tmp_path / "f32.tiff")
    expected = read_rgb(tmp_path / "g16.png")
    assert np.array_equal(expected[0, :, 0], ramp[0] >> 8)
    notes: list[str] = []
    keyed = read_rgb(tmp_path / "g16_key.png", notes)
    assert (keyed[:, 0] == 255).all() and np.abs(keyed[:, 1:].astype(int) - expected[:, 1:]).max() <= 1
    assert notes == ["g16_key.png has transparent pixels: they are shown over white"]
    assert np.abs(read_rgb(tmp_path / "f32.tiff").astype(int) - expected).max() <= 1
