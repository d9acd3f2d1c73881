"""The model zoo: classic CIFAR-10 course CNNs plus the flagship, registered by name.

Every model takes raw RGB pixels in [0, 255] (float32 NHWC) and normalises inside the
graph, so every exported artifact can take uint8 pixels as they come from the loader.
Keras is imported inside the builders: importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

CIFAR10_MEAN = (125.307, 122.961, 113.8575)  # per-channel pixel mean of the official train split
CIFAR10_STD = (62.9932, 62.0887, 66.7049)


@dataclass(frozen=True)
class Recipe:
    """How an architecture is trained by default; recorded in the manifest."""

    epochs: int
    batch_size: int
    optimizer: str  # "adam" or "sgd-nesterov"
    lr: float
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    schedule: str = "constant"  # "constant" or "warmup-linear"
    augment: tuple[str, ...] = ()  # "flip", "translate2"
    momentum: float = 0.9
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[..., Any]
    recipe: Recipe
    description: str
    reported: str = ""
    needs_whitening: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


ZOO: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    ZOO[arch.name] = arch
    return arch


def get_arch(name: str) -> Arch:
    from cifarbench.errors import UsageError

    try:
        return ZOO[name]
    except KeyError:
        raise UsageError(f"unknown architecture {name!r}; choose from {', '.join(sorted(ZOO))}") from None


def _stem(keras: Any, num_classes: int) -> tuple[Any, Any]:
    inputs = keras.Input((32, 32, 3), name="pixels", dtype="float32")
    mean = np.asarray(CIFAR10_MEAN, np.float32)
    std = np.asarray(CIFAR10_STD, np.float32)
    x = keras.layers.Normalization(mean=mean, variance=std**2, name="normalize")(inputs)
    return inputs, x


def _head(keras: Any, x: Any) -> Any:
    # The softmax stays in float32 under mixed precision; artifacts output probabilities.
    return keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)


def build_baseline_cnn(num_classes: int = 10) -> Any:
    import keras
    from keras import layers as L

    inputs, x = _stem(keras, num_classes)
    for width in (32, 64, 128):
        x = L.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = L.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = L.MaxPooling2D()(x)
        x = L.Dropout(0.2)(x)
    x = L.Flatten()(x)
    x = L.Dense(1024, activation="relu")(x)
    x = L.Dropout(0.2)(x)
    x = L.Dense(512, activation="relu")(x)
    x = L.Dropout(0.2)(x)
    x = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, _head(keras, x), name="baseline_cnn")


def build_vgg_bn(num_classes: int = 10) -> Any:
    import keras
    from keras import layers as L

    inputs, x = _stem(keras, num_classes)
    for width in (64, 128, 256):
        for _ in range(2):
            x = L.Conv2D(width, 3, padding="same", use_bias=False)(x)
            x = L.BatchNormalization()(x)
            x = L.ReLU()(x)
        x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dense(256, activation="relu")(x)
    x = L.Dropout(0.5)(x)
    x = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, _head(keras, x), name="vgg_bn")


def build_benchmark_cnn(num_classes: int = 10) -> Any:
    import keras
    from keras import layers as L

    inputs, x = _stem(keras, num_classes)
    for width, drop in ((32, 0.3), (64, 0.5), (128, 0.5)):
        for _ in range(2):
            x = L.Conv2D(width, 3, padding="valid", activation="relu")(x)
            x = L.BatchNormalization()(x)
        x = L.MaxPooling2D()(x) if x.shape[1] >= 2 else x
        x = L.Dropout(drop)(x)
    x = L.Flatten()(x)
    x = L.Dense(128, activation="relu")(x)
    x = L.Dropout(0.5)(x)
    x = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, _head(keras, x), name="benchmark_cnn")


def build_flagship(num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256)) -> Any:
    """airbench94-style: frozen 2x2 whitening conv, three conv groups with BN after pooling.

    ReLU instead of GELU keeps the int8 path fast in XNNPACK.
    """
    import keras
    from keras import layers as L

    inputs, x = _stem(keras, num_classes)
    x = L.Conv2D(24, 2, padding="valid", use_bias=True, name="whiten")(x)
    x = L.ReLU()(x)
    for i, width in enumerate(widths):
        x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"g{i}_conv1")(x)
        x = L.MaxPooling2D(2, name=f"g{i}_pool")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"g{i}_bn1")(x)
        x = L.ReLU()(x)
        x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"g{i}_conv2")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"g{i}_bn2")(x)
        x = L.ReLU()(x)
    x = L.GlobalMaxPooling2D()(x)
    x = L.Dense(num_classes, use_bias=False, name="logits")(x)
    return keras.Model(inputs, _head(keras, x), name="flagship")


def build_tiny_cnn(num_classes: int = 10) -> Any:
    """Seconds to train: for smoke tests, demos and CI, not for accuracy."""
    import keras
    from keras import layers as L

    inputs, x = _stem(keras, num_classes)
    for width in (8, 16):
        x = L.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
        x = L.MaxPooling2D()(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, _head(keras, x), name="tiny_cnn")


def init_whitening(model: Any, images: np.ndarray, eps: float = 5e-4) -> None:
    """Set the 2x2 whitening conv from the PCA of training patches (airbench's trick).

    The layer is frozen afterwards: it decorrelates the input so SGD converges in few epochs.
    """
    layer = model.get_layer("whiten")
    norm = (images[:5000].astype(np.float32) - np.asarray(CIFAR10_MEAN, np.float32)) / np.asarray(CIFAR10_STD, np.float32)
    p = np.lib.stride_tricks.sliding_window_view(norm, (2, 2), axis=(1, 2))  # N,31,31,C,2,2
    p = p.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12).astype(np.float64)  # kh, kw, c order
    cov = np.cov(p[:: max(1, len(p) // 200_000)], rowvar=False)
    eigval, eigvec = np.linalg.eigh(cov)
    w = eigvec.T / np.sqrt(eigval[:, None] + eps)  # 12 filters x 12 inputs
    w = np.concatenate([w, -w])  # 24 filters: both signs survive the ReLU
    kernel = w.T.reshape(2, 2, 3, 24).astype(np.float32)
    layer.set_weights([kernel, np.zeros(24, np.float32)])
    layer.trainable = False


register(Arch(
    "baseline-cnn", build_baseline_cnn,
    Recipe(epochs=25, batch_size=64, optimizer="adam", lr=1e-3),
    "conv 32-32/64-64/128-128, dropout 0.2, dense 1024-512", "~80% after 25 epochs of Adam, no augmentation",
))
register(Arch(
    "vgg-bn", build_vgg_bn,
    Recipe(epochs=60, batch_size=128, optimizer="sgd-nesterov", lr=0.05, weight_decay=5e-4,
           schedule="warmup-linear", warmup_epochs=2, augment=("flip", "translate2")),
    "three VGG blocks 64/128/256 with BatchNorm, dense 256", "~90-91% with augmentation",
))
register(Arch(
    "benchmark-cnn", build_benchmark_cnn,
    Recipe(epochs=50, batch_size=64, optimizer="adam", lr=1e-3),
    "double 3x3 convs 32/64/128 (valid padding) with BN, dropout 0.3/0.5/0.5, dense 128", "~82%",
))
register(Arch(
    "tiny-cnn", build_tiny_cnn,
    Recipe(epochs=5, batch_size=32, optimizer="adam", lr=1e-2),
    "two conv-BN-ReLU-pool blocks 8/16, global average pooling", "smoke tests only",
))
register(Arch(
    "flagship", build_flagship,
    Recipe(epochs=9, batch_size=256, optimizer="sgd-nesterov", lr=0.2, weight_decay=5e-4,
           label_smoothing=0.2, schedule="warmup-linear", warmup_epochs=0.5, augment=("flip", "translate2"),
           momentum=0.9, notes="airbench94-style; whitening conv frozen from training-patch PCA"),
    "airbench94-style residual-free net, widths 64/256/256, ReLU, BN after pooling", "~94% (airbench94, with TTA, PNG data)",
    needs_whitening=True,
))


def count_params(model: Any) -> int:
    return int(model.count_params())


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one forward pass, counted from conv and dense layer shapes."""
    total = 0
    for layer in model.layers:
        cls = type(layer).__name__
        if cls in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
            out = layer.output.shape  # (None, H, W, C)
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            if cls == "Conv2D":
                total += out[1] * out[2] * out[3] * kh * kw * cin // layer.groups
            elif cls == "DepthwiseConv2D":
                total += out[1] * out[2] * out[3] * kh * kw
            else:
                mult = layer.depth_multiplier
                total += out[1] * out[2] * cin * mult * kh * kw + out[1] * out[2] * out[3] * cin * mult
        elif cls == "Dense":
            total += int(np.prod(layer.input.shape[1:])) * layer.units
    return int(total)
