"""What one image or video may be: the limits of each kind, decided once per item before a byte is read,
and the one byte-size check every reader of media bytes applies.

`check_size` is the only place a media item's byte count is compared with its limit (a data URL's
payload before and after decoding, an HTTP download by Content-Length and while it streams, an upload
by its spooled size and by what was read, and the decoders' own guard): one rule, one message
(`<what>: larger than the limit of N bytes`), one code (413 `media_too_large`). The request body as a
whole is bounded apart (`service.middleware.BodyLimitMiddleware`, 413 `request_too_large`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from service.errors import MediaTooLarge


def check_size(size: int, max_bytes: int, what: str) -> None:
    """413 `media_too_large` when a media item of `size` bytes is over its limit of `max_bytes`."""
    if size > max_bytes:
        raise MediaTooLarge(f"{what}: larger than the limit of {max_bytes} bytes", code="media_too_large")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_aspect_ratio: float = 200.0

    @classmethod
    def from_settings(cls, settings) -> ImageLimits:
        return cls(settings.max_image_bytes, settings.max_image_pixels, settings.max_image_aspect_ratio)


@dataclass(frozen=True)
class VideoLimits:
    max_bytes: int
    max_duration_s: float
    max_frame_pixels: int
    max_frames: int
    fps: float
    frame_max_side: int
    max_decoded_frames: int

    @classmethod
    def from_settings(cls, settings) -> VideoLimits:
        return cls(
            max_bytes=settings.max_video_bytes,
            max_duration_s=settings.max_video_duration_s,
            max_frame_pixels=settings.max_video_frame_pixels,
            max_frames=settings.video_max_frames,
            fps=settings.video_fps,
            frame_max_side=settings.video_frame_max_side,
            max_decoded_frames=settings.max_video_decoded_frames,
        )

    def narrowed(self, max_frames: int | None = None, fps: float | None = None) -> VideoLimits:
        """Per-request options may lower the sampling limits, never raise them."""
        return replace(
            self,
            max_frames=min(self.max_frames, max_frames) if max_frames else self.max_frames,
            fps=min(self.fps, fps) if fps else self.fps,
        )
