"""MediaIntake: every image and video of one request in one pass, from where its bytes are to validated
items SGLang can take, with metrics.

The pass (`prepare`), in this order:
1. limits: each item's limits are decided before any byte is read (`service.media.limits`: the
   server's image limits; a video's narrowed by its own `max_frames` / `fps`);
2. bytes: each item is read within its byte limit (`service.media.fetch.read_media`: a data URL, an
   http(s) URL under the SSRF policy, or an uploaded file);
3. decode: each item is validated and re-encoded (`images.prepare_image`, `video.prepare_video`) in a
   worker thread, so one large video does not stall the event loop (health probes, other streams);
4. count: the visual tokens of all of them against the per-request bound (`visual_tokens`).
Items go through 2-3 concurrently (images started first); the first refused item cancels the others and its error (a 4xx) is
raised. A URL of the chat API and a multipart upload of `/v1/generate` differ only in step 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import anyio
import httpx

from service.errors import APIError
from service.media.fetch import FetchPolicy, Upload, read_media
from service.media.images import PreparedImage, prepare_image
from service.media.limits import ImageLimits, VideoLimits
from service.media.video import PreparedVideo, prepare_video
from service.media.visual_tokens import VisualTokenCost
from service.metrics import GatewayMetrics


@dataclass(frozen=True)
class MediaItem:
    """One image or video of a request, as the route found it: where its bytes are (a URL string or an
    upload), its name in error messages, and a video's own sampling options (which may only lower
    the server's)."""

    kind: Literal["image", "video"]
    source: str | Upload
    what: str
    max_frames: int | None = None
    fps: float | None = None


@dataclass
class PreparedMedia:
    """A request's validated media, images and videos each in prompt order (the order SGLang pairs them
    with the template's pad tokens)."""

    images: list[PreparedImage] = field(default_factory=list)
    videos: list[PreparedVideo] = field(default_factory=list)
    media_ms: float = 0.0


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

    def limits_for(self, item: MediaItem) -> ImageLimits | VideoLimits:
        if item.kind == "image":
            return self.image_limits
        return self.video_limits.narrowed(max_frames=item.max_frames, fps=item.fps)

    async def prepare(
        self, items: list[MediaItem], cost: VisualTokenCost, max_visual_tokens: int | None
    ) -> PreparedMedia:
        """The pass of the module docstring over a request's `items` (in prompt order)."""
        limits = [self.limits_for(item) for item in items]
        results: list = [None] * len(items)
        start = time.perf_counter()
        if items:
            try:
                async with anyio.create_task_group() as tg:  # the first refusal cancels the other items
                    # Images start first (the cheaper kind), then videos, each kind in prompt order.
                    for index in sorted(range(len(items)), key=lambda i: items[i].kind != "image"):

                        async def run(index=index):
                            results[index] = await self._one(items[index], limits[index])

                        tg.start_soon(run)
            except BaseExceptionGroup as group:
                # Surface the client's error (a 4xx), not the group wrapper.
                first = next((e for e in _leaves(group) if isinstance(e, APIError)), None)
                if first is not None:
                    raise first from None
                raise
        media = PreparedMedia(
            images=[r for item, r in zip(items, results, strict=True) if item.kind == "image"],
            videos=[r for item, r in zip(items, results, strict=True) if item.kind == "video"],
            media_ms=(time.perf_counter() - start) * 1000.0,
        )
        cost.check(media.images, media.videos, max_visual_tokens)
        return media

    async def _one(self, item: MediaItem, limits: ImageLimits | VideoLimits) -> PreparedImage | PreparedVideo:
        """Bytes, then decode, of one item under its decided limits; counted in the media metrics."""
        decode = prepare_image if item.kind == "image" else prepare_video
        start = time.perf_counter()
        try:
            media = await read_media(
                item.source, max_bytes=limits.max_bytes, policy=self.fetch_policy, client=self._client, what=item.what
            )
            prepared = await anyio.to_thread.run_sync(decode, media.data, limits, item.what, media.declared_type)
        except APIError as exc:
            self.metrics.media_rejected.labels(kind=item.kind, code=exc.code or "invalid").inc()
            raise
        self.metrics.media_items.labels(kind=item.kind).inc()
        self.metrics.media_seconds.labels(kind=item.kind).observe(time.perf_counter() - start)
        if item.kind == "video":
            self.metrics.video_frames.observe(prepared.frames)
        return prepared


def _leaves(group: BaseExceptionGroup):
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
