"""Graph pieces the zoo's architectures and airbench's training graph share: the normalising stem, the softmax
head, and the flagship's inference graph (which airbench's training graph folds back into). Apart from zoo.py so
airbench.py can build on them without importing the registry that imports it. Keras is imported inside.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CIFAR10_MEAN = (125.307, 122.961, 113.8575)  # per-channel pixel mean of the official train split
CIFAR10_STD = (62.9932, 62.0887, 66.7049)
ImageSize = tuple[int, int]


def stem(keras: Any, image_size: ImageSize = (32, 32)) -> tuple[Any, Any]:
    """Raw pixels in at (H, W), normalised inside the graph (so artifacts take uint8 as loaded)."""
    inputs = keras.Input((int(image_size[0]), int(image_size[1]), 3), name="pixels", dtype="float32")
    mean = np.asarray(CIFAR10_MEAN, np.float32)
    std = np.asarray(CIFAR10_STD, np.float32)
    x = keras.layers.Normalization(mean=mean, variance=std**2, name="normalize")(inputs)
    return inputs, x


def head(keras: Any, x: Any) -> Any:
    # The softmax stays in float32 under mixed precision; artifacts output probabilities.
    return keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)


def build_flagship(num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256),
                   image_size: ImageSize = (32, 32)) -> Any:
    """airbench94's net: frozen 2x2 whitening conv, three conv groups with BN after pooling.

    This is the shipped (inference) graph; training uses ``airbench.build_train`` and folds back
    into this one. BN has no gamma (airbench fixes it at 1). ReLU instead of GELU keeps int8 fast.
    """
    import keras
    from keras import layers as L

    inputs, x = stem(keras, image_size)
    x = L.Conv2D(24, 2, padding="valid", use_bias=True, name="whiten")(x)
    x = L.ReLU()(x)
    for i, width in enumerate(widths):
        x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"g{i}_conv1")(x)
        x = L.MaxPooling2D(2, name=f"g{i}_pool")(x)
        x = L.BatchNormalization(momentum=0.6, epsilon=1e-12, scale=False, name=f"g{i}_bn1")(x)
        x = L.ReLU()(x)
        x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"g{i}_conv2")(x)
        x = L.BatchNormalization(momentum=0.6, epsilon=1e-12, scale=False, name=f"g{i}_bn2")(x)
        x = L.ReLU()(x)
    x = L.GlobalMaxPooling2D()(x)
    x = L.Dense(num_classes, use_bias=False, name="logits")(x)
    return keras.Model(inputs, head(keras, x), name="flagship")
