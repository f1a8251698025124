"""Video intake with PyAV: containers/codecs, uniform sampling with fps cap, limits, the re-encoded clip."""

import math
import re
import sysconfig
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import InvalidRequest, MediaTooLarge, UnsupportedMediaType
from service.media.video import (
    ENCODE_FPS,
    VideoLimits,
    plan_frame_count,
    prepare_video,
    sample_times,
    scaled_size,
)
from testkit import decoded_frames, image_bytes, video_bytes

LIMITS = VideoLimits(
    max_bytes=5_000_000, max_duration_s=60, max_frame_pixels=1920 * 1080, max_frames=8, fps=2.0,
    frame_max_side=640, max_decoded_frames=10_000,
)  # fmt: skip


@pytest.mark.parametrize(
    "codec,fmt,expected",
    [("libx264", "mp4", ("mp4", "h264")), ("libvpx-vp9", "webm", ("webm", "vp9")), ("libx264", "mov", ("mp4", "h264"))],
)
def test_containers_and_codecs(codec, fmt, expected):
    data = video_bytes(codec, fmt, frames=30, fps=10)  # 3 s
    out = prepare_video(data, LIMITS)
    assert (out.source_format, out.source_codec) == expected
    assert out.duration_s == pytest.approx(3.0, abs=0.15)
    assert out.frames == 6  # 3 s x 2 fps, under max_frames
    frames = decoded_frames(out.mp4)
    assert len(frames) == out.frames
    assert (frames[0].width, frames[0].height) == (out.width, out.height) == (96, 64)
    # The clip runs at ENCODE_FPS so SGLang's Qwen-VL sampler keeps every frame.
    assert [round(f.time, 3) for f in frames] == [round(i / ENCODE_FPS, 3) for i in range(out.frames)]


def test_uniform_sampling_picks_the_right_frames():
    data = video_bytes(frames=40, fps=10)  # 4 s; frame i has red = 6 i
    out = prepare_video(data, LIMITS)
    assert out.frames == 8
    picked = [int(round(f.to_ndarray(format="rgb24")[40, 80, 0] / 6)) for f in decoded_frames(out.mp4)]
    expected = [math.ceil((t - 1e-6) * 10) for t in sample_times(4.0, 8)]  # first frame at/after each centre
    assert all(abs(p - e) <= 1 for p, e in zip(picked, expected, strict=True)), (picked, expected)
    assert picked == sorted(picked)


def test_per_request_limits_only_lower():
    assert LIMITS.narrowed(max_frames=4, fps=1.0).max_frames == 4
    assert LIMITS.narrowed(max_frames=100, fps=50.0) == LIMITS


def test_large_frames_are_scaled_down():
    out = prepare_video(video_bytes(frames=4, size=(1280, 720), fps=2), LIMITS)
    assert (out.width, out.height) == (640, 360) and (out.source_width, out.source_height) == (1280, 720)


@pytest.mark.parametrize(
    "limits,code",
    [
        (VideoLimits(**{**LIMITS.__dict__, "max_duration_s": 1.0}), "video_too_long"),
        (VideoLimits(**{**LIMITS.__dict__, "max_frame_pixels": 1000}), "video_too_large"),
        (VideoLimits(**{**LIMITS.__dict__, "max_decoded_frames": 3}), "video_too_long"),
    ],
    ids=["duration", "frame-size", "decoded-frames"],
)
def test_limits_are_413(limits, code):
    with pytest.raises(MediaTooLarge) as err:
        prepare_video(video_bytes(frames=30, fps=10), limits)
    assert err.value.code == code and err.value.status_code == 413


def test_byte_limit_is_413():
    with pytest.raises(MediaTooLarge):
        prepare_video(video_bytes(), VideoLimits(**{**LIMITS.__dict__, "max_bytes": 100}))


@pytest.mark.parametrize(
    "data,declared,status",
    [
        (b"\x00" * 1000, None, 415),
        (image_bytes(fmt="PNG"), "image/png", 415),  # an image is not a video
        (video_bytes("prores", "mov", frames=4, pix_fmt="yuv422p10le"), "video/quicktime", 415),  # codec not taken
        (b"\x00" * 1000, "video/mp4", 400),  # says MP4, is not: corrupt
    ],
    ids=["garbage", "an-image", "prores-codec-not-accepted", "garbage-declared-mp4"],
)
def test_bad_videos_are_415_or_400(data, declared, status):
    with pytest.raises((InvalidRequest, UnsupportedMediaType)) as err:
        prepare_video(data, LIMITS, declared_type=declared)
    assert err.value.status_code == status
    assert err.value.code == ("unsupported_media_type" if status == 415 else "invalid_media")


def test_truncated_file_is_refused_or_keeps_decodable_frames():
    data = video_bytes(frames=40, fps=10)
    try:
        out = prepare_video(data[: len(data) // 2], LIMITS, declared_type="video/mp4")
    except InvalidRequest as err:
        assert err.status_code == 400
        return
    assert out.frames % 2 == 0 and len(decoded_frames(out.mp4)) == out.frames


@given(duration=st.floats(0.01, 3600), max_frames=st.integers(1, 64).map(lambda n: 2 * n), fps=st.floats(0.05, 30))
def test_frame_plan_is_even_bounded_and_fps_capped(duration, max_frames, fps):
    limits = VideoLimits(**{**LIMITS.__dict__, "max_frames": max_frames, "fps": fps})
    n = plan_frame_count(duration, limits)
    assert n % 2 == 0 and 2 <= n <= max_frames
    assert n <= max(2, duration * fps)
    times = sample_times(duration, n)
    assert all(0 < t < duration for t in times) and times == sorted(times)


@given(w=st.integers(2, 8000), h=st.integers(2, 8000), side=st.integers(28, 2000))
def test_scaled_size_even_within_bound(w, h, side):
    sw, sh = scaled_size(w, h, side)
    assert sw % 2 == 0 and sh % 2 == 0 and max(sw, sh) <= max(side, 2) and sw >= 2 and sh >= 2


def test_encode_fps_matches_sglang_qwen_default():
    # SGLang's Qwen-VL loader samples at FPS = 2.0: a clip at that rate keeps all of its frames.
    # Read from the source: importing the processor module takes tens of seconds.
    source = (Path(sysconfig.get_paths()["purelib"]) / "sglang/srt/multimodal/processors/qwen_vl.py").read_text()
    fps = re.search(r"^FPS = ([0-9.]+)$", source, re.M).group(1)
    assert Fraction(ENCODE_FPS) == Fraction(fps)
