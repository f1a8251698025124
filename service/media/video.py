"""Decode, validate and sample one video with PyAV; re-encode the sampled frames as a small MP4 clip.

Contract of `prepare_video(data, limits)`:
- accepted containers: MP4/MOV (ISO BMFF) and WebM/Matroska; accepted codecs: H.264, HEVC, VP8, VP9,
  AV1, MPEG-4 Part 2. Anything else is a 415 before a frame is decoded (bytes PyAV cannot open at all
  are 415 too, unless the sender declared an accepted type: then they are a corrupt video, 400);
- limits (413 when exceeded): bytes, duration (from the container, or from the packet timestamps when it declares none),
  frame size (declared and per decoded frame), and a hard cap on decoded frames;
- sampling: `n` frames uniformly over the clip, at the centre of `n` equal time slots, with
  `n = min(max_frames, max(2, floor(duration * fps)))` rounded down to an even number (Qwen-VL
  merges consecutive frames in pairs, `temporal_patch_size = 2`);
- the sampled frames are scaled to at most `frame_max_side` and re-encoded as H.264 in MP4 at
  `ENCODE_FPS` frames per second. SGLang's Qwen-VL video loader samples at 2 fps by default, so a clip
  at 2 fps makes it keep every frame we chose: the gateway, not the backend, decides how many frames
  (hence visual tokens, hence KV) a video costs, and SGLang only ever decodes a small trusted clip.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from fractions import Fraction

import av

from service.errors import InvalidRequest, MediaTooLarge, UnsupportedMediaType
from service.media.limits import VideoLimits, check_size

ACCEPTED_CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "webm"}
ACCEPTED_TYPES = frozenset({"video/mp4", "video/quicktime", "video/webm", "video/x-matroska", "video/x-m4v"})
ACCEPTED_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"})
# The rate of the re-encoded clip: SGLang's Qwen-VL loader (`qwen_vl.smart_nframes`, FPS = 2.0) then
# keeps all of its frames. Changing it makes SGLang resample our samples.
ENCODE_FPS = 2.0
ENCODERS = ("libx264", "mpeg4")  # libx264 ships in PyAV's wheels; mpeg4 is FFmpeg's built-in fallback


@dataclass(frozen=True)
class PreparedVideo:
    """A validated, sampled video: the MP4 clip SGLang receives and what it was made from."""

    mp4: bytes
    frames: int
    width: int
    height: int
    source_width: int
    source_height: int
    source_format: str
    source_codec: str
    duration_s: float
    sample_times_s: tuple[float, ...]

    def data_url(self) -> str:
        return "data:video/mp4;base64," + base64.b64encode(self.mp4).decode("ascii")


def plan_frame_count(duration_s: float, limits: VideoLimits) -> int:
    """How many frames a clip of `duration_s` gets: even, at least 2, at most `limits.max_frames`."""
    n = min(limits.max_frames, max(2, math.floor(duration_s * limits.fps)))
    return max(2, n - n % 2)


def sample_times(duration_s: float, n: int) -> list[float]:
    """Centres of `n` equal slots of [0, duration): uniform, and never the very first/last instant."""
    return [(i + 0.5) * duration_s / n for i in range(n)]


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Fit (width, height) within `max_side`, keeping the aspect ratio; both even (for yuv420p)."""
    scale = min(1.0, max_side / max(width, height))
    w, h = max(2, round(width * scale)), max(2, round(height * scale))
    return w - w % 2, h - h % 2


def prepare_video(
    data: bytes, limits: VideoLimits, what: str = "video", declared_type: str | None = None
) -> PreparedVideo:
    """Validate `data` as a video under `limits`, sample its frames and re-encode them (see module doc).

    `declared_type` is the media type the client gave (data URL, upload, HTTP header), if any.
    """
    check_size(len(data), limits.max_bytes, what)
    try:
        with _open(data, what, declared_type) as container:
            stream, container_name, codec = _video_stream(container, what)
            _check_frame_size(stream.codec_context.width, stream.codec_context.height, limits, what)
            duration = _declared_duration(container, stream)
        if duration is None:
            duration = _duration_from_packets(data, what)
        if duration > limits.max_duration_s:
            raise MediaTooLarge(
                f"{what}: {duration:.1f} s is over the limit of {limits.max_duration_s:g} s", code="video_too_long"
            )
        n = plan_frame_count(duration, limits)
        times = sample_times(duration, n)
        frames, src_w, src_h = _decode_samples(data, times, limits, what)
    except av.FFmpegError:
        raise InvalidRequest(f"{what}: cannot be decoded", code="invalid_media") from None
    width, height = scaled_size(src_w, src_h, limits.frame_max_side)
    clip = _encode_clip(frames, width, height)
    return PreparedVideo(
        mp4=clip,
        frames=len(frames),
        width=width,
        height=height,
        source_width=src_w,
        source_height=src_h,
        source_format=ACCEPTED_CONTAINERS[container_name],
        source_codec=codec,
        duration_s=duration,
        sample_times_s=tuple(times),
    )


def _open(data: bytes, what: str, declared_type: str | None = None):
    try:
        return av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError):
        if declared_type in ACCEPTED_TYPES:
            raise InvalidRequest(f"{what}: cannot be decoded as {declared_type}", code="invalid_media") from None
        declared = f" ({declared_type})" if declared_type else ""
        raise UnsupportedMediaType(
            f"{what}: not a supported video{declared} (accepted: MP4/MOV, WebM/MKV)", code="unsupported_media_type"
        ) from None


def _video_stream(container, what: str):
    name = container.format.name
    if name not in ACCEPTED_CONTAINERS:
        raise UnsupportedMediaType(
            f"{what}: container {name!r} is not accepted (MP4/MOV, WebM/MKV)", code="unsupported_media_type"
        )
    if not container.streams.video:
        raise UnsupportedMediaType(f"{what}: has no video stream", code="unsupported_media_type")
    stream = container.streams.video[0]
    codec = stream.codec_context.name
    if codec not in ACCEPTED_CODECS:
        raise UnsupportedMediaType(
            f"{what}: codec {codec!r} is not accepted ({', '.join(sorted(ACCEPTED_CODECS))})",
            code="unsupported_media_type",
        )
    return stream, name, codec


def _check_frame_size(width: int, height: int, limits: VideoLimits, what: str) -> None:
    if width and height and width * height > limits.max_frame_pixels:
        raise MediaTooLarge(
            f"{what}: frame size {width}x{height} is over the limit of {limits.max_frame_pixels} pixels",
            code="video_too_large",
        )


def _declared_duration(container, stream) -> float | None:
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    if stream.duration and stream.time_base and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    return None


def _duration_from_packets(data: bytes, what: str) -> float:
    """Duration from packet timestamps (no decoding), for containers that declare none."""
    end = 0.0
    with _open(data, what) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if packet.pts is not None and packet.time_base is not None:
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    if end <= 0:
        raise InvalidRequest(f"{what}: has no timed frames", code="invalid_media")
    return end


def _decode_samples(data: bytes, times: list[float], limits: VideoLimits, what: str):
    """Decode sequentially; keep, for each target time, the first frame at or after it."""
    chosen: list = []
    last = None
    decoded = 0
    with _open(data, what) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                decoded += 1
                if decoded > limits.max_decoded_frames:
                    raise MediaTooLarge(f"{what}: more than {limits.max_decoded_frames} frames", code="video_too_long")
                _check_frame_size(frame.width, frame.height, limits, what)
                last = frame
                t = frame.time if frame.time is not None else decoded / ENCODE_FPS
                while len(chosen) < len(times) and t + 1e-6 >= times[len(chosen)]:
                    chosen.append(frame)
                if len(chosen) == len(times):
                    break
        except av.FFmpegError:
            if last is None:
                raise InvalidRequest(f"{what}: cannot be decoded", code="invalid_media") from None
            # A damaged tail: keep what decoded, like a player would.
    if last is None:
        raise InvalidRequest(f"{what}: has no decodable frames", code="invalid_media")
    chosen += [last] * (len(times) - len(chosen))  # targets past the last frame get the last frame
    return chosen, chosen[0].width, chosen[0].height


def _encode_clip(frames: list, width: int, height: int) -> bytes:
    rate = Fraction(ENCODE_FPS).limit_denominator(1000)
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = _add_encoder_stream(container, rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, frame in enumerate(frames):
            yuv = frame.reformat(width=width, height=height, format="yuv420p")
            yuv.pts, yuv.time_base = i, 1 / rate
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def _add_encoder_stream(container, rate: Fraction):
    for name in ENCODERS:
        try:
            options = {"preset": "veryfast", "crf": "18"} if name == "libx264" else {"qscale": "2"}
            return container.add_stream(name, rate=rate, options=options)
        except (av.FFmpegError, ValueError):
            continue
    raise RuntimeError("PyAV has no usable video encoder (libx264 or mpeg4)")
