"""Image → 448² tiles → normalised pixel values, exactly as the VITA-1.5 reference (docs/model.md, "Images").

InternVL dynamic tiling: pick the tile grid whose aspect ratio is closest to the image's, resize the whole
image to that grid (PIL bicubic), cut it row-major and, when there is more than one tile, append a 448²
thumbnail of the original. Pixels are ImageNet-normalised in float32. No torchvision.

This is the model side only: decoding uploaded bytes, with typed errors and size limits, is the engine's
(``engine.llm.media.decode_image``); here bad arguments are a plain ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

TILE_SIZE = 448
TOKENS_PER_TILE = 256
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# The reference sorts a Python set of grids by tile count; this is that exact order for max_num = 12
# (docs/model.md, "Images"). Order matters: ties in aspect-ratio distance keep the earlier/later grid.
_REFERENCE_GRID_ORDER_12: tuple[tuple[int, int], ...] = (
    (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1),
    (3, 2), (2, 3), (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3), (9, 1), (2, 5),
    (5, 2), (10, 1), (1, 10), (11, 1), (1, 11), (12, 1), (3, 4), (4, 3), (1, 12), (6, 2), (2, 6),
)


@dataclass(frozen=True, slots=True)
class TilePlan:
    """How an image is cut: ``cols`` × ``rows`` tiles plus an optional thumbnail."""

    cols: int
    rows: int
    thumbnail: bool

    @property
    def num_tiles(self) -> int:
        """Tiles fed to the vision tower, thumbnail included."""
        return self.cols * self.rows + int(self.thumbnail)

    @property
    def num_tokens(self) -> int:
        """LLM embeddings the image becomes (256 per tile)."""
        return TOKENS_PER_TILE * self.num_tiles


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """Tile grids (cols, rows) in the reference's order for ``min_num ≤ cols·rows ≤ max_num``."""
    if max_num <= 12:
        return [g for g in _REFERENCE_GRID_ORDER_12 if min_num <= g[0] * g[1] <= max_num]
    # Beyond the shipped range: same set, stable-sorted by tile count (order among equals is ours).
    grids = {(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_num <= i * j <= max_num}
    return sorted(sorted(grids), key=lambda g: g[0] * g[1])


def plan_tiles(width: int, height: int, *, min_num: int = 1, max_num: int = 1,
               use_thumbnail: bool = True) -> TilePlan:
    """The reference's ``find_closest_aspect_ratio`` (ties go to the larger grid for large images)."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_num, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * TILE_SIZE * TILE_SIZE * cols * rows:
            best = (cols, rows)
    cols, rows = best
    return TilePlan(cols, rows, thumbnail=use_thumbnail and cols * rows > 1)


def tile_image(image: Image.Image, plan: TilePlan) -> list[Image.Image]:
    """Cut ``image`` into the 448² tiles of ``plan`` (row-major, thumbnail last)."""
    resized = image.resize((TILE_SIZE * plan.cols, TILE_SIZE * plan.rows), Image.Resampling.BICUBIC)
    tiles = []
    for k in range(plan.cols * plan.rows):
        x, y = (k % plan.cols) * TILE_SIZE, (k // plan.cols) * TILE_SIZE
        tiles.append(resized.crop((x, y, x + TILE_SIZE, y + TILE_SIZE)))
    if plan.thumbnail:
        tiles.append(image.resize((TILE_SIZE, TILE_SIZE), Image.Resampling.BICUBIC))
    return tiles


def normalize_tile(tile: Image.Image) -> np.ndarray:
    """(u8/255 − mean)/std in float32, CHW: what CLIPImageProcessor gives on an exact 448² tile."""
    pixels = np.asarray(tile, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def image_to_pixel_values(image: Image.Image, *, max_num: int = 1, min_num: int = 1,
                          use_thumbnail: bool = True) -> np.ndarray:
    """The full image path: RGB → plan → tiles → pixel values ``[tiles, 3, 448, 448]`` float32."""
    if not 1 <= min_num <= max_num:
        raise ValueError(f"need 1 ≤ min_dynamic_patch ≤ max_dynamic_patch, got {min_num}, {max_num}")
    rgb = image.convert("RGB")
    plan = plan_tiles(*rgb.size, min_num=min_num, max_num=max_num, use_thumbnail=use_thumbnail)
    return np.stack([normalize_tile(t) for t in tile_image(rgb, plan)])
