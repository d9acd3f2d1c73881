"""A recipe's optimization: the learning-rate schedule, the optimizer and the loss, compiled into a Keras model."""

from __future__ import annotations

from typing import Any

from cifarbench.errors import UsageError
from cifarbench.models.zoo import Recipe


def lr_schedule(keras: Any, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Any:
    """The recipe's learning rate: constant, airbench's warm-up/decay, or linear warm-up then linear decay."""
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.schedule == "airbench":
        from cifarbench.models.airbench import WarmupDecay

        return WarmupDecay(recipe.lr, total_steps)

    @keras.saving.register_keras_serializable(package="cifarbench")
    class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up to the peak, then linear decay to zero at the last step."""

        def __init__(self, peak: float, warmup: int, total: int) -> None:
            self.peak, self.warmup, self.total = float(peak), int(warmup), int(total)

        def __call__(self, step: Any) -> Any:
            ops = keras.ops
            s = ops.cast(step, "float32") + 1.0
            up = s / max(1, self.warmup)
            down = (self.total - s) / max(1, self.total - self.warmup)
            return self.peak * ops.clip(ops.minimum(up, down), 0.0, 1.0)

        def get_config(self) -> dict[str, Any]:
            return {"peak": self.peak, "warmup": self.warmup, "total": self.total}

    return WarmupLinear(recipe.lr, int(recipe.warmup_epochs * steps_per_epoch), total_steps)


def compile_recipe(keras: Any, model: Any, recipe: Recipe, lr: Any, jit: bool, micro: int = 1) -> None:
    """The recipe's optimizer (decoupled weight decay off norms and biases) and label-smoothed loss.

    With ``micro`` > 1 the optimizer accumulates ``micro`` micro-batches per update (Keras averages their
    gradients); a summed loss is weighted by ``micro`` so the update equals the full batch's sum, while
    the regularizers' penalty, added once per micro-batch, averages back to itself.
    """
    acc = {"gradient_accumulation_steps": micro} if micro > 1 else {}
    if recipe.optimizer == "adam":
        opt = keras.optimizers.Adam(lr, weight_decay=recipe.weight_decay or None, **acc)
    elif recipe.optimizer == "sgd-nesterov":
        opt = keras.optimizers.SGD(lr, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay or None,
                                   **acc)
    else:  # pragma: no cover - recipes are fixed in the zoo
        raise UsageError(f"unknown optimizer {recipe.optimizer!r}")
    if recipe.weight_decay:
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing, reduction=(
        "sum" if recipe.loss_reduction == "sum" else "sum_over_batch_size"))
    weights = [float(micro)] if micro > 1 and recipe.loss_reduction == "sum" else None
    model.compile(optimizer=opt, loss=loss, loss_weights=weights, metrics=["accuracy"], jit_compile=jit)
