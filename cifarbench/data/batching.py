"""How many images one inference call may take at a given input size.

Batch sizes chosen for 32x32 pixels need gigabytes of activations at 224x224 (convert's Keras reference ran
500 MobileNetV2 images per call and was killed for memory on a 24 GB machine), so the fixed sizes become caps
and a batch holds at most ``PIXELS_PER_BATCH`` input pixels: unchanged up to 64x64 at 256 images per call,
20 images at 224x224.
"""

from __future__ import annotations

from typing import Sequence

PIXELS_PER_BATCH = 256 * 64 * 64
DEFAULT_BATCH = 256  # classify's images per call without --batch-size, up to 64x64 pixels
SERVE_BATCH = 64  # serve's --max-batch without the option, up to 128x128 pixels


def images_per_batch(size: Sequence[int], cap: int = 256) -> int:
    """``cap`` images, fewer when each has more than 64x64 pixels; at least 1."""
    h, w = int(size[0]), int(size[1])
    return max(1, min(int(cap), PIXELS_PER_BATCH // max(1, h * w)))
