"""The model zoo: classic CIFAR-10 course CNNs plus the flagship, registered by name.

Every model takes raw RGB pixels in [0, 255] (float32 NHWC) and normalises inside the
graph, so every exported artifact can take uint8 pixels as they come from the loader.
Builders take ``image_size`` (H, W): 32x32 by default, any size for ``train --image-size``.
Keras is imported inside the builders: importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cifarbench.models.blocks import CIFAR10_MEAN, CIFAR10_STD, ImageSize, build_flagship, stem
from cifarbench.models.blocks import head as _head



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
    # airbench-style pieces (see cifarbench/models/airbench.py); defaults keep the classic recipes unchanged.
    loss_reduction: str = "mean"  # "sum": airbench's summed loss, with lr on that scale
    l2: float = 0.0  # coupled weight decay as an L2 penalty (goes through momentum, as in PyTorch)
    lookahead: bool = False  # every 5 steps toward an EMA copy
    whiten_bias_epochs: int = 0  # the whitening bias trains this many epochs, then freezes
    drop_remainder: bool = False  # airbench drops the last partial batch of each epoch

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
    # A separate training graph (per-parameter lr tricks as layers) and the fold back to ``build``'s model.
    build_train: Callable[..., Any] | None = None
    to_plain: Callable[..., Any] | None = None


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




def build_baseline_cnn(num_classes: int = 10, image_size: ImageSize = (32, 32)) -> Any:
    import keras
    from keras import layers as L

    inputs, x = stem(keras, image_size)
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


def build_vgg_bn(num_classes: int = 10, image_size: ImageSize = (32, 32)) -> Any:
    import keras
    from keras import layers as L

    inputs, x = stem(keras, image_size)
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


def build_benchmark_cnn(num_classes: int = 10, image_size: ImageSize = (32, 32)) -> Any:
    import keras
    from keras import layers as L

    inputs, x = stem(keras, image_size)
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


def build_tiny_cnn(num_classes: int = 10, image_size: ImageSize = (32, 32)) -> Any:
    """Seconds to train: for smoke tests, demos and CI, not for accuracy."""
    import keras
    from keras import layers as L

    inputs, x = stem(keras, image_size)
    for width in (8, 16):
        x = L.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
        x = L.MaxPooling2D()(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, _head(keras, x), name="tiny_cnn")


def init_whitening(model: Any, images: np.ndarray, eps: float = 5e-4, seed: int = 0) -> None:
    """Set the 2x2 whitening conv from the PCA of 5,000 training images' patches (airbench's trick).

    The kernel is frozen afterwards: it decorrelates the input so SGD converges in few epochs. The
    images are a random sample: train splits are often stored class by class.
    """
    layer = model.get_layer("whiten")
    pick = np.sort(np.random.default_rng([seed, 0x5EED]).permutation(len(images))[:5000])
    norm = (images[pick].astype(np.float32) - np.asarray(CIFAR10_MEAN, np.float32)) / np.asarray(CIFAR10_STD, np.float32)
    p = np.lib.stride_tricks.sliding_window_view(norm, (2, 2), axis=(1, 2))  # N,31,31,C,2,2
    p = p.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12).astype(np.float64)  # kh, kw, c order
    cov = np.cov(p[:: max(1, len(p) // 200_000)], rowvar=False)
    eigval, eigvec = np.linalg.eigh(cov)
    w = eigvec.T / np.sqrt(eigval[:, None] + eps)  # 12 filters x 12 inputs
    w = np.concatenate([w, -w])  # 24 filters: both signs survive the ReLU
    kernel = w.T.reshape(2, 2, 3, 24).astype(np.float32)
    layer.set_weights([kernel] + [np.zeros(24, np.float32)] * (len(layer.weights) - 1))
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
def _flagship_recipe() -> Recipe:
    # airbench94's numbers translated to Keras (cifarbench/models/airbench.py says how); Keras imported lazily.
    momentum = 0.85
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd_per_step = 11.5 / kilostep, 0.0153 * 1024 / kilostep
    return Recipe(
        epochs=10, batch_size=1024, optimizer="sgd-nesterov", lr=lr, momentum=momentum, label_smoothing=0.2,
        schedule="airbench", augment=("alternating-flip", "translate2"), loss_reduction="sum",
        l2=wd_per_step / lr / 2, lookahead=True, whiten_bias_epochs=3, drop_remainder=True,
        notes="airbench94 port: summed loss, coupled L2 decay, BN bias at 64x lr, gamma fixed, BN momentum 0.6/eps 1e-12, "
              "Dirac init, whitening bias frozen after 3 epochs, logits x 1/9, lookahead to an EMA every 5 steps",
    )


def _airbench_train(num_classes: int = 10, image_size: ImageSize = (32, 32)) -> Any:
    from cifarbench.models import airbench

    return airbench.build_train(num_classes, image_size=image_size)


def _airbench_plain(model: Any, num_classes: int = 10) -> Any:
    from cifarbench.models import airbench

    return airbench.to_plain(model, num_classes)


register(Arch(
    "flagship", build_flagship, _flagship_recipe(),
    "airbench94's net, widths 64/256/256, ReLU, BN after pooling, trained with its recipe",
    "89.6% single view after 9.9 epochs (airbench94 on this JPEG archive, ReLU)",
    needs_whitening=True, build_train=_airbench_train, to_plain=_airbench_plain,
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
