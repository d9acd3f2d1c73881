"""What this machine is: CPU model and the flags that decide speed, GPUs, library versions."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
PACKAGES = ("cifarbench", "numpy", "pillow", "onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "openvino", "tensorflow", "keras", "tf2onnx", "onnx", "click", "rich")


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1  # pragma: no cover - non-Linux


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "flags": {f: (f in flags) for f in SPEED_FLAGS},
    }


def has_fast_bf16() -> bool:
    f = cpu_info()["flags"]
    return bool(f.get("avx512_bf16") or f.get("amx_bf16"))


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> list[str]:
    """GPU names from nvidia-smi, without importing any framework."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def environment() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "gpus": nvidia_gpus(),
        "versions": package_versions(),
        "onnxruntime_providers": onnxruntime_providers(),
    }
