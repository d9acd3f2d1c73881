"""airbench94's training recipe, expressed in standard Keras 3 (any backend).

Why a training graph separate from the shipped one: two of airbench's pieces are per-parameter
optimizer settings that Keras optimizers do not have — BatchNorm biases at 64x the learning rate
and a whitening bias that trains for 3 epochs and then freezes. Both become tiny layers here
(``BiasScaledBN`` uses 8*beta as its offset, so SGD moves the effective bias 64x faster at an equal
lr x decay; ``GatedBias`` passes its gradient only while ``gate`` is 1). After training, ``to_plain`` folds
them into an ordinary Conv2D/BatchNormalization/Dense model, so ``model.keras`` needs no custom
objects to load and converts like any other model.

Importing this module imports Keras and registers the layers, the schedule and the callback.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

# airbench94's hyperparameters, "per 1024 examples" (PyTorch conventions).
MOMENTUM = 0.85
KILOSTEP = 1024 * (1 + 1 / (1 - MOMENTUM))  # examples one unit of lr moves the weights over, with momentum
LR = 11.5 / KILOSTEP  # lr on the *summed* loss (~1.465e-3; ~1.5 on a batch-1024 mean loss)
WD_PER_STEP = 0.0153 * 1024 / KILOSTEP  # lr x weight_decay per step for every parameter group (~2.0e-3)
# PyTorch's coupled decay adds wd/lr * w to the gradient; an L2 penalty c*|w|^2 adds 2c*w.
L2 = WD_PER_STEP / LR / 2
BIAS_SCALE = 8.0  # the BN offset is 8*beta: the effective bias moves 8^2 = 64x faster
BN_MOMENTUM = 0.6  # Keras convention (PyTorch momentum 0.4)
BN_EPSILON = 1e-12
LOGIT_SCALE = 1 / 9
LOOKAHEAD_EVERY = 5


def torch_default_init() -> Any:
    """PyTorch's conv/linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


@keras.saving.register_keras_serializable(package="cifarbench")
class BiasScaledBN(keras.layers.BatchNormalization):
    """BatchNorm without gamma whose offset is ``scale * beta``: a bias with 64x the lr (its gradient is 8x, and
    so is its effect), folded into the normalisation's per-channel affine, so it costs no extra pass over the tensor."""

    def __init__(self, bias_scale: float = BIAS_SCALE, l2: float = 0.0, **kwargs: Any) -> None:
        for key in ("center", "scale", "beta_regularizer"):
            kwargs.pop(key, None)
        super().__init__(center=True, scale=False, beta_regularizer=keras.regularizers.L2(l2) if l2 else None, **kwargs)
        self.bias_scale, self.l2 = float(bias_scale), float(l2)

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        x = ops.cast(inputs, "float32")
        if training and self.trainable:
            mean, variance = self._moments(x, mask)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        out = ops.batch_normalization(x, mean, variance, axis=self.axis, offset=self.beta * self.bias_scale,
                                      scale=None, epsilon=self.epsilon)
        return ops.cast(out, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bias_scale": self.bias_scale, "l2": self.l2}


@keras.saving.register_keras_serializable(package="cifarbench")
class GatedBias(keras.layers.Layer):
    """A bias that trains while ``gate`` is 1 and is frozen (no gradient, no decay) when it is 0.

    The gate is a variable, so flipping it reaches an already-compiled train function
    (changing ``trainable`` after compile would not).
    """

    def __init__(self, l2: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.l2 = float(l2)

    def build(self, input_shape: Any) -> None:
        self.b = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="b",
                                 regularizer=self._penalty if self.l2 else None)
        self.gate = self.add_weight(shape=(), initializer="ones", trainable=False, name="gate")

    def _penalty(self, b: Any) -> Any:
        """The gated L2 term, as a weight regularizer in float32 like the others. An ``add_loss`` in ``call()``
        read the weight autocast (bf16 under mixed_bfloat16) and Keras' sum of the model's losses refused the
        mixed list: "Cannot convert a list containing a tensor of dtype bfloat16 to float32" (issue 24)."""
        return self.l2 * ops.cast(self.gate, "float32") * ops.sum(ops.square(ops.cast(b, "float32")))

    def call(self, x: Any) -> Any:
        b = self.gate * self.b + (1.0 - self.gate) * ops.stop_gradient(self.b)
        return x + ops.cast(b, x.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "l2": self.l2}


@keras.saving.register_keras_serializable(package="cifarbench")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """airbench's multiplier: linear 0.2 -> 1.0 over the first 23 % of steps, then linear to 0.07."""

    def __init__(self, peak: float, total: int, warmup_frac: float = 0.23, start: float = 0.2, end: float = 0.07) -> None:
        self.peak, self.total = float(peak), int(total)
        self.warmup_frac, self.start, self.end = float(warmup_frac), float(start), float(end)

    def __call__(self, step: Any) -> Any:
        s = ops.cast(step, "float32")
        warm = float(max(1, int(self.total * self.warmup_frac)))
        up = self.start + (1.0 - self.start) * s / warm
        frac = (s - warm) / max(1.0, self.total - warm)
        down = 1.0 + (self.end - 1.0) * frac
        return self.peak * ops.where(s < warm, up, down)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total": self.total, "warmup_frac": self.warmup_frac,
                "start": self.start, "end": self.end}


def build_train(num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256), l2: float = L2,
                image_size: tuple[int, int] = (32, 32)) -> Any:
    """The flagship's training graph (see the module docstring); ``to_plain`` gives the shipped model."""
    from cifarbench.models.blocks import stem

    L = keras.layers
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs, x = stem(keras, image_size)
    x = L.Conv2D(24, 2, padding="valid", use_bias=False, trainable=False, name="whiten")(x)
    x = GatedBias(l2=l2, name="whiten_bias")(x)
    x = L.ReLU()(x)
    for i, width in enumerate(widths):
        for j in (1, 2):
            x = L.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=torch_default_init(),
                         kernel_regularizer=reg, name=f"g{i}_conv{j}")(x)
            if j == 1:
                x = L.MaxPooling2D(2, name=f"g{i}_pool")(x)
            x = BiasScaledBN(l2=l2, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype="float32", name=f"g{i}_bn{j}")(x)
            x = L.ReLU()(x)
    x = L.GlobalMaxPooling2D()(x)
    x = L.Dense(num_classes, use_bias=False, kernel_initializer=torch_default_init(), kernel_regularizer=reg,
                name="logits")(x)
    x = L.Rescaling(LOGIT_SCALE, name="logit_scale")(x)
    out = L.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, out, name="flagship")


def dirac_init(model: Any) -> None:
    """Set the first C_in filters of every 3x3 conv to the identity (PyTorch's ``dirac_``)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3):
            k = keras.ops.convert_to_numpy(layer.kernel).copy()
            cin = k.shape[2]
            n = min(cin, k.shape[3])
            k[:, :, :, :n] = 0.0
            k[1, 1, np.arange(n), np.arange(n)] = 1.0
            layer.kernel.assign(k)


def set_whiten_bias_trainable(model: Any, on: bool) -> None:
    model.get_layer("whiten_bias").gate.assign(1.0 if on else 0.0)


def to_plain(train_model: Any, num_classes: int = 10) -> Any:
    """Fold the training graph into the standard-layer flagship (same outputs, no custom objects)."""
    from cifarbench.models.blocks import build_flagship

    plain = build_flagship(num_classes, image_size=tuple(train_model.input_shape[1:3]))
    src = {layer.name: layer for layer in train_model.layers}
    w = lambda name: [keras.ops.convert_to_numpy(v) for v in src[name].weights]  # noqa: E731
    kernel = w("whiten")[0]
    plain.get_layer("whiten").set_weights([kernel, w("whiten_bias")[0]])
    for layer in plain.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.name != "whiten":
            layer.set_weights(w(layer.name))
        elif isinstance(layer, keras.layers.BatchNormalization):
            beta, mean, var = w(layer.name)
            layer.set_weights([beta * src[layer.name].bias_scale, mean, var])
    plain.get_layer("logits").set_weights([w("logits")[0] * src["logit_scale"].scale])
    return plain


class Lookahead(keras.callbacks.Callback):
    """Every 5 steps pull the weights (BN statistics included) toward an EMA copy and write it back.

    EMA decay is 0.95**5 * (step/total)**3; at the last step the EMA copy replaces the weights.
    ``state()``/``load_state()`` carry the copy through checkpoints so ``--resume`` is exact.
    """

    def __init__(self, total_steps: int, every: int = LOOKAHEAD_EVERY, micro: int = 1) -> None:
        super().__init__()
        # Counted in batches fit() runs: with gradient accumulation over ``micro`` micro-batches, every
        # ``every`` optimizer updates is every ``every * micro`` batches.
        self.micro = int(micro)
        self.total, self.every = int(total_steps) * self.micro, int(every) * self.micro
        self.ema: list[np.ndarray] | None = None

    def _variables(self) -> list[Any]:
        gates = {id(layer.gate) for layer in self.model.layers if isinstance(layer, GatedBias)}
        return [v for v in self.model.weights if (v.trainable and id(v) not in gates) or _is_bn_stat(v)]

    def on_train_begin(self, logs: Any = None) -> None:
        # The step is counted here rather than read from the optimizer each batch: on the JAX backend
        # reading any variable mid-epoch needs a full state sync, which only the lookahead steps pay.
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) * self.micro  # updates
        if self.ema is None:
            self.ema = [keras.ops.convert_to_numpy(v).copy() for v in self._variables()]

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.step += 1
        if self.step % self.every and self.step != self.total:
            return
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
        if self.step % self.every == 0:
            self._update(0.95**5 * (min(self.step, self.total) / self.total) ** 3)
        if self.step == self.total:
            self._update(1.0)

    def _update(self, decay: float) -> None:
        for v, e in zip(self._variables(), self.ema):
            e += (1.0 - decay) * (keras.ops.convert_to_numpy(v) - e)
            v.assign(e)

    def state(self) -> dict[str, np.ndarray]:
        return {f"ema_{i}": e for i, e in enumerate(self.ema or [])}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays:
            self.ema = [np.asarray(arrays[f"ema_{i}"]) for i in range(len(arrays))]


def _is_bn_stat(v: Any) -> bool:
    return v.path.rsplit("/", 1)[-1] in ("moving_mean", "moving_variance")
