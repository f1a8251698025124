"""What the tests, the benchmarks and the load test share to drive a server: media made on the fly
(images with Pillow, clips with PyAV; no files shipped), waiting until a server is ready, an ASGI app
on a real uvicorn server in a thread, flushing SGLang's cache once it is idle, and stopping SGLang
servers without waiting for them.

The one home of these helpers: `tests/`, `bench/` and `loadtest/` import them from here. Nothing under
`service/` or `radix_ext/` may import this package (it is client-side tooling, not the product).
`av` and `numpy` are imported where a clip is built, so a Locust process that sends no video never
loads them.
"""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Callable

import httpx
from PIL import Image

# --- media -----------------------------------------------------------------------------------------------


def data_url(data: bytes, mime: str) -> str:
    """`data:<mime>;base64,...` of raw bytes."""
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_data_url(img: Image.Image) -> str:
    """A PIL image as a `data:image/png;base64,...` URL (saved as is, no mode conversion)."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return data_url(buf.getvalue(), "image/png")


def make_image(size, color, seed_pattern=0) -> Image.Image:
    """A deterministic RGB image with some structure (so visual tokens differ): a dot every 16 px on a
    diagonal-stripe pattern shifted by `seed_pattern`, in the inverse of `color`."""
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 16):
        for y in range(0, size[1], 16):
            if (x // 16 + y // 16 + seed_pattern) % 3 == 0:
                img.putpixel((x, y), (255 - color[0], 255 - color[1], 255 - color[2]))
    return img


def image_bytes(size=(64, 48), color=(200, 30, 30), fmt="PNG", **save_kwargs) -> bytes:
    """A small encoded image (`fmt`: PNG, JPEG, WEBP, GIF, ...) with a diagonal of inverse-colour pixels."""
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 8):  # some structure, so visual tokens differ
        img.putpixel((x, x % size[1]), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def grey_ramp(i: int, height: int, width: int):
    """Frame `i` of the default test clip: one flat grey level, 20 + 25 * i."""
    import numpy as np

    return np.full((height, width, 3), (20 + 25 * i) % 256, np.uint8)


def red_index(i: int, height: int, width: int):
    """Frame `i` whose red level encodes its index (i * 6), with a green top-left quarter."""
    import numpy as np

    a = np.zeros((height, width, 3), np.uint8)
    a[:, :, 0] = (i * 6) % 256
    a[: height // 2, : width // 2, 1] = 200
    return a


def video_bytes(
    codec: str | None = None,
    fmt: str = "mp4",
    frames: int = 20,
    size=(96, 64),
    fps: float = 10,
    pix_fmt: str = "yuv420p",
    frame: Callable = red_index,
) -> bytes:
    """A short synthetic clip: `frames` frames of `size` (width, height) drawn by `frame(i, height, width)`
    (an RGB uint8 array), encoded with `codec` (default: libx264, or FFmpeg's built-in mpeg4 when this
    PyAV has no libx264) in container `fmt` at `fps`."""
    import av

    if codec is None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    width, height = size
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame(i, height, width), format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def mp4_data_url(frames: int = 8, size: int = 112, frame: Callable = grey_ramp) -> str:
    """A `size` x `size` MP4 clip of `frames` frames at 4 fps (the grey ramp by default), as a data URL."""
    return data_url(video_bytes(frames=frames, size=(size, size), fps=4, frame=frame), "video/mp4")


def decoded_frames(mp4: bytes) -> list:
    import av

    with av.open(io.BytesIO(mp4)) as container:
        return [f for f in container.decode(video=0)]


# --- servers ---------------------------------------------------------------------------------------------


def wait_until_ready(
    url: str,
    *,
    path: str = "/ready",
    timeout_s: float = 120.0,
    poll_s: float = 0.3,
    stopped: Callable[[], str | None] | None = None,
    name: str = "server",
) -> None:
    """Poll `GET url + path` until it answers 200. `stopped()`, if given, says why the server can no
    longer come up (its process exited, its thread died) or None while it may: a reason raises
    RuntimeError at once. Past `timeout_s`: TimeoutError."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while True:
            reason = stopped() if stopped is not None else None
            if reason is not None:
                raise RuntimeError(reason)
            try:
                if client.get(url + path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready at {url}")
            time.sleep(poll_s)


def flush_when_idle(server: str | httpx.Client, timeout_s: float = 120.0) -> None:
    """POST `/flush_cache` until SGLang accepts it: it answers 400 while any request runs (aborted ones
    finish a step later, health probes count too). `server` is a base URL or a client with a base URL.
    Past `timeout_s`: TimeoutError."""
    deadline = time.monotonic() + timeout_s
    own = isinstance(server, str)
    client = httpx.Client(base_url=server, timeout=30) if own else server
    try:
        while client.post("/flush_cache").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{client.base_url} never went idle for /flush_cache")
            time.sleep(0.2)
    finally:
        if own:
            client.close()


@contextlib.contextmanager
def running_server(app, ready_path: str = "/health", timeout_s: float = 120.0):
    """Run an ASGI app on a real uvicorn server on a free loopback port, in a background thread; yield
    its base URL once `ready_path` answers 200 (the app's lifespan has run by then)."""
    import uvicorn

    from service.sglang_process import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            url, path=ready_path, timeout_s=timeout_s, poll_s=0.1, name="gateway",
            stopped=lambda: None if thread.is_alive() else "the gateway server stopped during start-up",
        )  # fmt: skip
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# --- stopping SGLang servers without waiting for them ------------------------------------------------------
# An SGLang server takes 5-10 s to stop, nearly all of it idle (its SIGTERM watchdog polls every 5 s). A test
# fixture done with its servers SIGTERMs them and moves on; a thread per server waits for the exit (and
# SIGKILLs what outlives the grace period, as `SGLangServer.stop` does), and whoever owns the run joins
# them all at its end (`join_background_stops`; tests/integration/conftest.py does at the session's end).
_stopping: list[threading.Thread] = []


def stop_in_background(*servers) -> None:
    """SIGTERM each `service.sglang_process.SGLangServer` now; its `stop()` runs in a thread."""
    for server in servers:
        server.terminate()
        thread = threading.Thread(target=server.stop, name=f"stop {server.url}", daemon=True)
        thread.start()
        _stopping.append(thread)


def join_background_stops() -> None:
    """Wait until every server handed to `stop_in_background` has exited (or been killed)."""
    while _stopping:
        _stopping.pop().join()
