"""Test media made on the fly: images with Pillow, videos encoded with PyAV (no files shipped)."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
from PIL import Image


def image_bytes(size=(64, 48), color=(200, 30, 30), fmt="PNG", **save_kwargs) -> bytes:
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 8):  # some structure, so visual tokens differ
        img.putpixel((x, x % size[1]), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def video_bytes(codec="libx264", fmt="mp4", frames=20, size=(96, 64), fps=10, pix_fmt="yuv420p") -> bytes:
    """A short synthetic clip; each frame's red level encodes its index (index * 6)."""
    w, h = size
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for i in range(frames):
            a = np.zeros((h, w, 3), np.uint8)
            a[:, :, 0] = (i * 6) % 256
            a[: h // 2, : w // 2, 1] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decoded_frames(mp4: bytes) -> list:
    with av.open(io.BytesIO(mp4)) as container:
        return [f for f in container.decode(video=0)]
