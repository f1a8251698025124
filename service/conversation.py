"""From a request's messages (or uploaded files) to what SGLang needs: template messages plus ordered media.

Contract of `prepare_conversation` (chat API) and `prepare_uploads` (multipart `/v1/generate`): media
are only accepted in user messages; counts are bounded (`max_images_per_request`,
`max_videos_per_request`, checked before any fetch or decode); items are processed concurrently by
the same `MediaIntake`; the returned images and videos are in prompt order, which is the order
SGLang pairs them with the template's pad tokens. The first refused item cancels the others and its
error (a 4xx) is raised.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from service.errors import APIError, InvalidRequest
from service.media.images import PreparedImage
from service.media.intake import MediaIntake, Upload
from service.media.video import PreparedVideo
from service.schemas import ImagePart, Message, TextPart, VideoPart


@dataclass
class PreparedConversation:
    template_messages: list[dict]
    images: list[PreparedImage] = field(default_factory=list)
    videos: list[PreparedVideo] = field(default_factory=list)
    media_ms: float = 0.0


def _count_media(messages: list[Message]) -> tuple[int, int]:
    images = videos = 0
    for m, message in enumerate(messages):
        if isinstance(message.content, str):
            continue
        for part in message.content:
            if isinstance(part, (ImagePart, VideoPart)) and message.role != "user":
                raise InvalidRequest(
                    f"messages[{m}]: images and videos are accepted in user messages only", param=f"messages.{m}"
                )
            images += isinstance(part, ImagePart)
            videos += isinstance(part, VideoPart)
    return images, videos


def _check_counts(n_images: int, n_videos: int, max_images: int, max_videos: int) -> None:
    if n_images > max_images:
        raise InvalidRequest(
            f"{n_images} images; this server accepts at most {max_images} per request", code="too_many_media"
        )
    if n_videos > max_videos:
        raise InvalidRequest(
            f"{n_videos} videos; this server accepts at most {max_videos} per request", code="too_many_media"
        )


async def prepare_conversation(
    messages: list[Message], intake: MediaIntake, max_images: int, max_videos: int
) -> PreparedConversation:
    n_images, n_videos = _count_media(messages)
    _check_counts(n_images, n_videos, max_images, max_videos)
    template_messages: list[dict] = []
    image_jobs: list[Callable[[], Awaitable[PreparedImage]]] = []
    video_jobs: list[Callable[[], Awaitable[PreparedVideo]]] = []
    for m, message in enumerate(messages):
        if isinstance(message.content, str):
            template_messages.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict] = []
        for p, part in enumerate(message.content):
            what = f"messages[{m}].content[{p}]"
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                parts.append({"type": "image"})
                image_jobs.append(lambda url=part.image_url.url, what=what: intake.image(url, what))
            else:
                parts.append({"type": "video"})
                vu = part.video_url
                video_jobs.append(lambda vu=vu, what=what: intake.video(vu.url, what, vu.max_frames, vu.fps))
        template_messages.append({"role": message.role, "content": parts})
    return await _process(template_messages, image_jobs, video_jobs)


async def prepare_uploads(
    prompt: str,
    images: list[Upload],
    video: Upload | None,
    intake: MediaIntake,
    max_images: int,
    max_videos: int,
    *,
    video_max_frames: int | None = None,
    video_fps: float | None = None,
) -> PreparedConversation:
    """One user turn: the uploaded images (in upload order), then the video, then the prompt text."""
    videos = [video] if video is not None else []
    _check_counts(len(images), len(videos), max_images, max_videos)
    parts = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    parts.append({"type": "text", "text": prompt})
    image_jobs = [lambda f=f, i=i: intake.image_upload(f, f"images[{i}]") for i, f in enumerate(images)]
    video_jobs = [lambda f=f: intake.video_upload(f, "video", video_max_frames, video_fps) for f in videos]
    return await _process([{"role": "user", "content": parts}], image_jobs, video_jobs)


async def _process(template_messages: list[dict], image_jobs: list, video_jobs: list) -> PreparedConversation:
    images: list = [None] * len(image_jobs)
    videos: list = [None] * len(video_jobs)
    start = time.perf_counter()
    if image_jobs or video_jobs:
        try:
            async with anyio.create_task_group() as tg:  # the first refusal cancels the other items
                for results, jobs in ((images, image_jobs), (videos, video_jobs)):
                    for index, job in enumerate(jobs):

                        async def run(results=results, index=index, job=job):
                            results[index] = await job()

                        tg.start_soon(run)
        except BaseExceptionGroup as group:
            # Surface the client's error (a 4xx), not the group wrapper.
            first = next((e for e in _leaves(group) if isinstance(e, APIError)), None)
            if first is not None:
                raise first from None
            raise
    return PreparedConversation(
        template_messages=template_messages,
        images=images,
        videos=videos,
        media_ms=(time.perf_counter() - start) * 1000.0,
    )


def _leaves(group: BaseExceptionGroup):
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
