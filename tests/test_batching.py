"""Images per inference call at a given input size: the fixed 32x32-era batch sizes become caps."""

from __future__ import annotations

import pytest

from cifarbench.data.batching import PIXELS_PER_BATCH, images_per_batch


@pytest.mark.parametrize("size, cap, expected", [
    ((32, 32), 500, 500),  # CIFAR-10: unchanged
    ((64, 64), 256, 256),  # the limit: 256 images of 64x64 fill the budget exactly
    ((64, 65), 256, 252),  # one pixel past it: 1,048,576 // 4,160
    ((224, 224), 256, 20),
    ((224, 224), 8, 8),
    ((2048, 1024), 256, 1),  # one image is always allowed
    ((4096, 4096), 256, 1),
])
def test_images_per_batch(size: tuple[int, int], cap: int, expected: int) -> None:
    assert images_per_batch(size, cap) == expected
    assert images_per_batch(size, cap) * size[0] * size[1] <= max(PIXELS_PER_BATCH, size[0] * size[1])


def test_default_cap_and_the_one_pixel_model() -> None:
    assert images_per_batch((32, 32)) == 256  # classify's default, up to 64x64
    assert images_per_batch((64, 64)) == 256 and images_per_batch((64, 65)) == 252
    assert images_per_batch((1, 1), 10**6) == 10**6  # 1,048,576 one-pixel images fit: the cap decides
    assert images_per_batch((1, 2), 10**6) == PIXELS_PER_BATCH // 2
