"""MediaIntake: from a content part's URL, or an uploaded file, to a validated item, with metrics.

Both doors (`image` / `video` for URLs of the chat API, `image_upload` / `video_upload` for the
multipart files of `/v1/generate`) end in the same validation (`prepare_image`, `prepare_video`),
limits and metrics. Fetching is async (httpx); decoding and re-encoding are CPU work and run in
worker threads, so one large video does not stall the event loop (health probes, other streams).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import httpx

from service.errors import APIError, InvalidRequest, MediaTooLarge
from service.media.fetch import FetchPolicy, MediaBytes, load_media_bytes, media_type_of
from service.media.images import ImageLimits, PreparedImage, prepare_image
from service.media.video import PreparedVideo, VideoLimits, prepare_video
from service.metrics import GatewayMetrics


class Upload(Protocol):
    """What the intake needs of an uploaded file (Starlette's `UploadFile` has it)."""

    size: int | None
    content_type: str | None

    async def read(self, size: int = -1) -> bytes: ...


async def read_upload(upload: Upload, max_bytes: int, what: str) -> MediaBytes:
    """The bytes of an upload (already spooled by the form parser), refused over `max_bytes`."""
    if upload.size is not None and upload.size > max_bytes:
        raise MediaTooLarge(f"{what}: larger than the limit of {max_bytes} bytes", code="media_too_large")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise MediaTooLarge(f"{what}: larger than the limit of {max_bytes} bytes", code="media_too_large")
    if not data:
        raise InvalidRequest(f"{what}: empty file", code="invalid_media")
    return MediaBytes(data, media_type_of(upload.content_type))


class MediaIntake:
    def __init__(self, settings, metrics: GatewayMetrics, client: httpx.AsyncClient | None = None):
        self.image_limits = ImageLimits.from_settings(settings)
        self.video_limits = VideoLimits.from_settings(settings)
        self.fetch_policy = FetchPolicy.from_settings(settings)
        self.metrics = metrics
        # Its own client: no proxies from the environment (they would bypass the SSRF check).
        self._client = client or httpx.AsyncClient(trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _url(self, url: str, max_bytes: int, what: str) -> Callable[[], Awaitable[MediaBytes]]:
        return lambda: load_media_bytes(
            url, max_bytes=max_bytes, policy=self.fetch_policy, client=self._client, what=what
        )

    async def image(self, url: str, what: str) -> PreparedImage:
        return await self._image(self._url(url, self.image_limits.max_bytes, what), what)

    async def image_upload(self, upload: Upload, what: str) -> PreparedImage:
        return await self._image(lambda: read_upload(upload, self.image_limits.max_bytes, what), what)

    async def video(
        self, url: str, what: str, max_frames: int | None = None, fps: float | None = None
    ) -> PreparedVideo:
        limits = self.video_limits.narrowed(max_frames=max_frames, fps=fps)
        return await self._video(self._url(url, limits.max_bytes, what), limits, what)

    async def video_upload(
        self, upload: Upload, what: str, max_frames: int | None = None, fps: float | None = None
    ) -> PreparedVideo:
        limits = self.video_limits.narrowed(max_frames=max_frames, fps=fps)
        return await self._video(lambda: read_upload(upload, limits.max_bytes, what), limits, what)

    async def _image(self, load, what: str) -> PreparedImage:
        limits = self.image_limits
        return await self._run(
            "image", load, lambda media: prepare_image(media.data, limits, what, media.declared_type)
        )

    async def _video(self, load, limits: VideoLimits, what: str) -> PreparedVideo:
        video = await self._run(
            "video", load, lambda media: prepare_video(media.data, limits, what, media.declared_type)
        )
        self.metrics.video_frames.observe(video.frames)
        return video

    async def _run(self, kind: str, load: Callable[[], Awaitable[MediaBytes]], prepare):
        start = time.perf_counter()
        try:
            media = await load()
            item = await anyio.to_thread.run_sync(prepare, media)
        except APIError as exc:
            self.metrics.media_rejected.labels(kind=kind, code=exc.code or "invalid").inc()
            raise
        self.metrics.media_items.labels(kind=kind).inc()
        self.metrics.media_seconds.labels(kind=kind).observe(time.perf_counter() - start)
        return item
