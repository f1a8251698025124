"""From a request's messages (or uploaded files) to a plan: the template messages and the media items in
prompt order. Nothing is fetched or decoded here (that is `service.media.intake`, one pass later).

Contract of `plan_conversation` (chat API) and `plan_uploads` (multipart `/v1/generate`): media are
only accepted in user messages; counts are bounded (`max_images_per_request`,
`max_videos_per_request`), so a request over them is refused before any fetch or decode; the items
keep prompt order, which is the order SGLang pairs them with the template's pad tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.errors import InvalidRequest
from service.media.fetch import Upload
from service.media.intake import MediaItem
from service.schemas import ImagePart, Message, TextPart, VideoPart


@dataclass
class ConversationPlan:
    template_messages: list[dict]
    media: list[MediaItem] = field(default_factory=list)


def _check_counts(media: list[MediaItem], max_images: int, max_videos: int) -> None:
    n_images = sum(item.kind == "image" for item in media)
    n_videos = len(media) - n_images
    if n_images > max_images:
        raise InvalidRequest(
            f"{n_images} images; this server accepts at most {max_images} per request", code="too_many_media"
        )
    if n_videos > max_videos:
        raise InvalidRequest(
            f"{n_videos} videos; this server accepts at most {max_videos} per request", code="too_many_media"
        )


def plan_conversation(messages: list[Message], max_images: int, max_videos: int) -> ConversationPlan:
    template_messages: list[dict] = []
    media: list[MediaItem] = []
    for m, message in enumerate(messages):
        if isinstance(message.content, str):
            template_messages.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict] = []
        for p, part in enumerate(message.content):
            if isinstance(part, (ImagePart, VideoPart)) and message.role != "user":
                raise InvalidRequest(
                    f"messages[{m}]: images and videos are accepted in user messages only", param=f"messages.{m}"
                )
            what = f"messages[{m}].content[{p}]"
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                parts.append({"type": "image"})
                media.append(MediaItem("image", part.image_url.url, what))
            else:
                parts.append({"type": "video"})
                vu = part.video_url
                media.append(MediaItem("video", vu.url, what, vu.max_frames, vu.fps))
        template_messages.append({"role": message.role, "content": parts})
    _check_counts(media, max_images, max_videos)
    return ConversationPlan(template_messages, media)


def plan_uploads(
    prompt: str,
    images: list[Upload],
    video: Upload | None,
    max_images: int,
    max_videos: int,
    *,
    video_max_frames: int | None = None,
    video_fps: float | None = None,
) -> ConversationPlan:
    """One user turn: the uploaded images (in upload order), then the video, then the prompt text."""
    media = [MediaItem("image", f, f"images[{i}]") for i, f in enumerate(images)]
    if video is not None:
        media.append(MediaItem("video", video, "video", video_max_frames, video_fps))
    _check_counts(media, max_images, max_videos)
    parts = [{"type": item.kind} for item in media] + [{"type": "text", "text": prompt}]
    return ConversationPlan([{"role": "user", "content": parts}], media)
