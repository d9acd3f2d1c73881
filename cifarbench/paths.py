"""Where cifarbench finds its shipped models, bundled data and cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_TEST_ARCHIVE = PACKAGE_DIR / "_data" / "cifar10-test.tar.xz"
DEFAULT_MODEL = "flagship"


def trained_dir() -> Path:
    """The shipped models: ``cifarbench/trained`` when installed, ``<repo>/trained`` in a checkout."""
    env = os.environ.get("CIFARBENCH_TRAINED_DIR")
    if env:
        return Path(env)
    try:
        import cifarbench.trained as shipped  # mapped from the top-level trained/ at install time

        return Path(shipped.__path__[0]).resolve()
    except ImportError:  # pragma: no cover - broken install
        return PACKAGE_DIR.parent / "trained"


def cache_dir() -> Path:
    env = os.environ.get("CIFARBENCH_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cifarbench"
