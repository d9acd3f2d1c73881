"""``--resize``, ``--crop-pct``, ``--interpolation``: one run's override of the eval transform convert stored.

Defined once and applied to classify, bench and serve, so the three commands take the same values,
say the same thing in --help and refuse the same bad values (exit 2) before loading anything.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import click

from cifarbench.data.transform import INTERPOLATIONS, RESIZE_POLICIES

F = TypeVar("F", bound=Callable[..., object])


def _crop_pct(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:  # nan fails too
        raise click.BadParameter(f"must be in (0, 1], got {value:g}")
    return value


def transform_options(f: F) -> F:
    """Add the three override options (keyword arguments ``resize``, ``crop_pct``, ``interpolation``; None: the manifest's)."""
    options = (
        click.option("--resize", type=click.Choice(RESIZE_POLICIES),
                     help="How images become the model's own H x W: center-crop, squash or pad. Default: what convert "
                          "stored (center-crop for older models)."),
        click.option("--crop-pct", type=float, callback=_crop_pct, metavar="PCT",
                     help="timm's crop_pct in (0, 1]: resize to floor(size / PCT), then centre-crop. Default: the manifest's."),
        click.option("--interpolation", type=click.Choice(INTERPOLATIONS),
                     help="Resampling filter. Default: the manifest's (lanczos for older models)."),
    )
    for option in reversed(options):
        f = option(f)
    return f
