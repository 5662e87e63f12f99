"""Pathfinder sprites: paddles and markers drawn at ``aa_scale`` x with PIL, Lanczos-resized, as in snakes2.

A paddle is a line of ``length`` pixels from the sprite's centre along ``theta``; its margin mask is that
line dilated by a disk of ``margin`` pixels (at the drawing scale), resized the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


def translate(y: float, x: float, theta: float, dist: float) -> tuple[int, int]:
    """Move (y, x) by ``dist`` along ``theta`` and round up, as the original ``translate_coord``."""
    return int(math.ceil(y + dist * math.sin(theta))), int(math.ceil(x + dist * math.cos(theta)))


def disk(radius: float) -> np.ndarray:
    """Integer offsets (n, 2) with y^2 + x^2 <= radius^2."""
    r = int(math.floor(radius))
    ys, xs = np.mgrid[-r : r + 1, -r : r + 1]  # (2r+1, 2r+1) each
    keep = ys**2 + xs**2 <= radius**2
    return np.stack([ys[keep], xs[keep]], axis=1)


def dilate(binary: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a 2-D bool array by a disk of ``radius`` (what cv2.dilate does with such a kernel)."""
    out = np.zeros_like(binary)
    padded = np.pad(binary, radius)
    h, w = binary.shape
    for dy, dx in disk(radius):
        out |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


def _lanczos(array: np.ndarray, size: int) -> np.ndarray:
    """uint8 array -> (size, size) Lanczos resize, as float in [0, 1]."""
    return np.asarray(Image.fromarray(array).resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0


@dataclass
class Paddle:
    line: np.ndarray  # (n, n) float in [0, 1], the paddle starting at the centre
    mask: np.ndarray  # (n, n) float in [0, 1], the paddle dilated by the margin
    struct: np.ndarray  # (k, 2) offsets where the mask is saturated (seed availability)


def render_paddle(length: int, thickness: float, margin: int, aa: int, theta: float) -> Paddle:
    """A paddle from the sprite centre along ``theta``, drawn at ``aa`` x and Lanczos-resized."""
    if round(thickness * aa) != thickness * aa:
        raise ValueError(f"pathfinder: thickness {thickness} x aa_scale {aa} must be an integer")
    half = length + math.ceil(thickness) + margin
    blown_size, centre = 2 * half * aa + 1, half * aa
    head_y, head_x = translate(centre, centre, theta, length * aa)
    image = Image.new("L", (blown_size, blown_size), 0)
    ImageDraw.Draw(image).line([(centre, centre), (head_x, head_y)], fill=255, width=round(thickness * aa))
    blown = np.asarray(image)
    size = 2 * half + 1
    dilated = dilate(blown > 0, margin * aa).astype(np.uint8) * 255
    mask_u8 = np.asarray(Image.fromarray(dilated).resize((size, size), Image.LANCZOS))
    struct = np.argwhere(mask_u8 == 255) - half  # (k, 2)
    return Paddle(_lanczos(blown, size), mask_u8.astype(np.float32) / 255.0, struct)


def render_marker(radius: float, aa: int) -> np.ndarray:
    """A disk centred on the sprite's middle pixel, drawn at ``aa`` x and Lanczos-resized."""
    half = int(math.ceil(radius)) + 2
    size = 2 * half + 1
    ys, xs = np.ogrid[: size * aa, : size * aa]
    circle = ((ys - half * aa) ** 2 + (xs - half * aa) ** 2 <= (radius * aa) ** 2).astype(np.uint8) * 255
    return _lanczos(circle, size)
