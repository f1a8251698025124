"""How many tiles SGLang 0.5.23 cuts an image into for InternVL (`InternVLProcessor.dynamic_preprocess`,
sglang/srt/multimodal/processors/internvl.py), so the gateway counts what the engine will.

The image is resized to the grid of 448-px tiles (`cols x rows`, at most `max_tiles`) whose aspect ratio
is closest to the image's, and a thumbnail tile is added when there is more than one. SGLang breaks a tie
in aspect toward the grid with more tiles (InternVL's own code instead wants the image large enough for
it), so a square image takes the 3 x 3 grid: 9 tiles + thumbnail, whatever its size. Each tile then costs
the model's tokens per tile. A video is `VIDEO_FRAMES` frames of one tile each, whatever the clip's
length (SGLang samples fewer only when the context is too short for them).
"""

from __future__ import annotations

MAX_TILES = 12  # SGLang's IMAGE_MAX_NUM: the folder's max_dynamic_patch is not read; a request can lower it
VIDEO_FRAMES = 32  # SGLang's DEFAULT_VIDEO_NUM_FRAMES, one tile per frame (VIDEO_MAX_NUM), no thumbnail


def tile_grid(width: int, height: int, max_tiles: int = MAX_TILES) -> tuple[int, int]:
    """`(cols, rows)` of SGLang's tile grid for a `width x height` image (its loop, tie-break included;
    the candidates are built and sorted exactly as SGLang does, so equal-distance ties fall the same way)."""
    aspect = width / height
    ratios = {
        (i, j) for n in range(1, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1) if i * j <= max_tiles
    }
    best, best_diff = (1, 1), float("inf")
    for cols, rows in sorted(ratios, key=lambda r: r[0] * r[1]):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and cols * rows > best[0] * best[1]:
            best = (cols, rows)
    return best


def image_tiles(width: int, height: int, max_tiles: int = MAX_TILES) -> int:
    """Tiles of one image: the grid's, plus the thumbnail when the grid has more than one."""
    cols, rows = tile_grid(width, height, max_tiles)
    return cols * rows + (1 if cols * rows > 1 else 0)
