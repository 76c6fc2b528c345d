"""Camera frames for one turn: a bounded number, evenly spaced over the utterance, aspect kept."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

from engine.interface import CameraFrame
from engine.llm.errors import ImageInputError


def pick_frames(frames: Sequence[CameraFrame], start: int, end: int, limit: int) -> list[CameraFrame]:
    """At most ``limit`` frames, evenly spaced, from those taken in ``[start, end]`` (mic samples).

    Frames outside the span are ignored unless none is inside; then the latest one stands in.
    """
    if limit <= 0 or not frames:
        return []
    ordered = sorted(frames, key=lambda f: f.at_sample)
    inside = [f for f in ordered if start <= f.at_sample <= end] or ordered[-1:]
    if len(inside) <= limit:
        return inside
    if limit == 1:
        return [inside[-1]]
    step = (len(inside) - 1) / (limit - 1)
    return [inside[round(i * step)] for i in range(limit)]


def square_frame(jpeg: bytes, max_side: int) -> Image.Image:
    """Decode ``jpeg``, shrink it to ``max_side`` and pad it to a square, so the model's square tile
    does not stretch the picture."""
    try:
        with Image.open(io.BytesIO(jpeg)) as src:
            im = src.convert("RGB")
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageInputError(f"camera frame cannot be decoded: {exc}") from exc
    im.thumbnail((max_side, max_side))
    side = max(im.size)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas
