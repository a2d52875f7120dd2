"""Devices: `--device auto|cpu|cuda|cuda:N|mps`, and mixed precision where it pays."""

from __future__ import annotations

import contextlib

import torch

from sitscli.core.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """`auto` = CUDA if present, then Apple MPS, then CPU; an explicit device must exist."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA GPU is visible here (use --device cpu, or check CUDA_VISIBLE_DEVICES)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {spec}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not _mps_available():
        raise ConfigError(f"--device {spec}: Apple MPS is not available here (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {spec!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full precision elsewhere.

    CPU and MPS keep float32: bf16 autocast there is slower or incomplete for these models.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (and MPS) out-of-memory errors, whose remedy is a smaller batch."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def free_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
