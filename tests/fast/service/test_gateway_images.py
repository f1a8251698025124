"""Image intake: formats, EXIF orientation, byte/pixel/aspect limits, decompression bombs."""

import io

import pytest
from PIL import Image

from service.errors import InvalidRequest, MediaTooLarge, UnsupportedMediaType
from service.media.images import ImageLimits, prepare_image
from testkit import image_bytes

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=4_000_000, max_aspect_ratio=200)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_accepted_formats_become_rgb_png(fmt):
    out = prepare_image(image_bytes((64, 48), fmt=fmt), LIMITS)
    assert (out.width, out.height, out.source_format) == (64, 48, fmt)
    img = Image.open(io.BytesIO(out.png))
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (64, 48)
    assert out.data_url().startswith("data:image/png;base64,")


def test_gif_first_frame_only():
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = Image.open(io.BytesIO(prepare_image(buf.getvalue(), LIMITS).png))
    r, g, b = out.getpixel((5, 5))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (80, 40), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    out = prepare_image(buf.getvalue(), LIMITS)
    assert (out.width, out.height) == (40, 80)


def test_byte_limit_is_413():
    with pytest.raises(MediaTooLarge) as err:
        prepare_image(image_bytes((64, 48)), ImageLimits(max_bytes=100, max_pixels=10**6))
    assert err.value.status_code == 413


def test_pixel_limit_refused_before_decoding():
    # A 20000 x 20000 PNG of one colour is a few kB on the wire and 1.2 GB decoded.
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 200_000
    with pytest.raises(MediaTooLarge) as err:
        prepare_image(buf.getvalue(), LIMITS)
    assert err.value.code == "image_too_large" and err.value.status_code == 413


def test_pillow_bomb_guard_is_fatal_even_under_our_pixel_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow warns at 1x, raises at 2x
    with pytest.raises(MediaTooLarge) as err:
        prepare_image(image_bytes((40, 30)), LIMITS)  # 1200 pixels: a warning in Pillow, refused here
    assert err.value.code == "image_too_large"


def test_aspect_ratio_limit():
    with pytest.raises(InvalidRequest):
        prepare_image(image_bytes((1000, 2)), LIMITS)


@pytest.mark.parametrize(
    "data,declared,status,code",
    [
        (b"not an image at all", None, 415, "unsupported_media_type"),  # nothing says what it is
        (b"not an image at all", "text/plain", 415, "unsupported_media_type"),
        (image_bytes(fmt="BMP"), "image/bmp", 415, "unsupported_media_type"),  # an image, of a type not taken
        (image_bytes(fmt="BMP"), None, 415, "unsupported_media_type"),
        (b"not an image at all", "image/png", 400, "invalid_media"),  # says PNG, is not: corrupt
        (image_bytes(fmt="PNG")[:60], None, 400, "invalid_media"),  # identified as PNG, truncated
        (image_bytes(fmt="PNG")[:60], "image/png", 400, "invalid_media"),
    ],
    ids=["garbage", "text", "bmp", "bmp-undeclared", "garbage-declared-png", "truncated-png", "truncated-declared"],
)
def test_bad_bytes_are_415_or_400(data, declared, status, code):
    with pytest.raises((InvalidRequest, UnsupportedMediaType)) as err:
        prepare_image(data, LIMITS, declared_type=declared)
    assert (err.value.status_code, err.value.code) == (status, code)
