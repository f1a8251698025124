"""Decode, validate and normalise one image with Pillow.

Contract of `prepare_image(data, limits)`:
- accepted formats: PNG, JPEG, WebP, GIF (first frame only; animation is not video);
- refusals: bytes Pillow cannot identify are 415 `unsupported_media_type`, unless the sender declared
  an accepted type (`image/png`, ...), which makes them a corrupt image: 400 `invalid_media`; so are
  identified images that fail to decode. Size limits (bytes, pixels, bombs) are 413;
- the pixel count (width x height from the header) is checked *before* any pixel is decoded, so a
  decompression bomb costs a header parse, not gigabytes; Pillow's own bomb guard is also made fatal;
- EXIF orientation is applied (a phone photo reaches the model upright, as the user saw it);
- the result is RGB, re-encoded as PNG (lossless): SGLang then never parses the client's original
  bytes, and metadata (EXIF, ICC, text chunks) stays in the gateway.
"""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidRequest, MediaTooLarge, UnsupportedMediaType
from service.media.limits import ImageLimits, check_size

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})
ACCEPTED_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/webp", "image/gif"})


@dataclass(frozen=True)
class PreparedImage:
    """A validated image, ready for SGLang."""

    png: bytes
    width: int
    height: int
    source_format: str

    def data_url(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def prepare_image(
    data: bytes, limits: ImageLimits, what: str = "image", declared_type: str | None = None
) -> PreparedImage:
    """Validate `data` as an image under `limits` and return it as an upright RGB PNG.

    `declared_type` is the media type the client gave (data URL, upload, HTTP header), if any.
    """
    check_size(len(data), limits.max_bytes, what)
    with warnings.catch_warnings():
        # Pillow warns (rather than fails) between 1x and 2x its MAX_IMAGE_PIXELS; we refuse both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS))
        except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            if isinstance(exc, UnidentifiedImageError):
                if declared_type in ACCEPTED_TYPES:
                    raise InvalidRequest(
                        f"{what}: cannot be decoded as {declared_type}", code="invalid_media"
                    ) from None
                raise UnsupportedMediaType(
                    f"{what}: not a supported image{_declared(declared_type)} (accepted: PNG, JPEG, WebP, GIF)",
                    code="unsupported_media_type",
                ) from None
            raise MediaTooLarge(f"{what}: refused as a decompression bomb", code="image_too_large") from None
        except Exception:  # truncated headers and the like: Pillow raises many types
            raise InvalidRequest(f"{what}: cannot be decoded", code="invalid_media") from None
        with img:
            width, height = img.size
            _check_geometry(width, height, limits, what)
            try:
                img.seek(0)  # GIF: first frame
                img.load()
                upright = ImageOps.exif_transpose(img)
                rgb = upright.convert("RGB")
            except (Image.DecompressionBombWarning, Image.DecompressionBombError):
                raise MediaTooLarge(f"{what}: refused as a decompression bomb", code="image_too_large") from None
            except Exception:
                raise InvalidRequest(
                    f"{what}: cannot be decoded (corrupt or truncated)", code="invalid_media"
                ) from None
            source_format = img.format or "unknown"
    out = io.BytesIO()
    rgb.save(out, "PNG")
    return PreparedImage(png=out.getvalue(), width=rgb.width, height=rgb.height, source_format=source_format)


def _check_geometry(width: int, height: int, limits: ImageLimits, what: str) -> None:
    if width < 1 or height < 1:
        raise InvalidRequest(f"{what}: empty image", code="invalid_media")
    if width * height > limits.max_pixels:
        raise MediaTooLarge(
            f"{what}: {width}x{height} is over the limit of {limits.max_pixels} pixels", code="image_too_large"
        )
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise InvalidRequest(
            f"{what}: aspect ratio {width}x{height} is over the limit of {limits.max_aspect_ratio:g}",
            code="invalid_media",
        )


def _declared(declared_type: str | None) -> str:
    return f" ({declared_type})" if declared_type else ""
