"""The shared helpers of tests, bench and loadtest (`testkit`): what they build decodes, and the product
never imports them."""

import ast
import base64
import io
from pathlib import Path

from PIL import Image

from testkit import decoded_frames, make_image, mp4_data_url, png_data_url, video_bytes

ROOT = Path(__file__).resolve().parents[3]


def test_media_builders_decode():
    url = png_data_url(make_image((64, 32), (10, 20, 30)))
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (64, 32)
    clip = mp4_data_url(frames=4, size=32)
    assert len(decoded_frames(base64.b64decode(clip.split(",", 1)[1]))) == 4
    frames = decoded_frames(video_bytes(frames=6, size=(48, 32)))
    assert len(frames) == 6 and (frames[0].width, frames[0].height) == (48, 32)


def test_the_product_never_imports_testkit():
    for package in ("service", "radix_ext"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                assert not any(n == "testkit" or n.startswith("testkit.") for n in names), path
