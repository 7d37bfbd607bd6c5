"""Where training runs and in what precision: device choice and autocast dtype.

The decisions are pure functions of what the machine offers (`resolve_device`,
`choose_autocast`), so they are tested on a CPU-only machine as well; the
`*_here` wrappers ask torch what this machine has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

DeviceRequest = Literal["auto", "cpu", "cuda"]
DEVICE_CHOICES: tuple[DeviceRequest, ...] = ("auto", "cpu", "cuda")


def resolve_device(requested: str, cuda_devices: int, local_rank: int = 0) -> torch.device:
    """The device of one training process.

    `auto` takes a GPU when there is one, else the CPU; `cuda` insists on a
    GPU. With several processes on one machine (torchrun), process
    `local_rank` takes GPU `local_rank`, so there must be one GPU per process.
    """
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {requested!r}; expected one of {DEVICE_CHOICES}")
    if requested == "cpu" or (requested == "auto" and cuda_devices == 0):
        return torch.device("cpu")
    if cuda_devices == 0:
        raise ValueError(
            "--device cuda, but torch sees no CUDA GPU (a CPU build of torch, or no driver); "
            "use --device cpu or auto"
        )
    if local_rank >= cuda_devices:
        raise ValueError(
            f"process {local_rank} of this machine needs GPU {local_rank}, but only "
            f"{cuda_devices} are visible: start at most {cuda_devices} processes per machine"
        )
    return torch.device("cuda", local_rank)


def resolve_device_here(requested: str, local_rank: int = 0) -> torch.device:
    """`resolve_device` with the GPUs torch sees on this machine."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return resolve_device(requested, count, local_rank)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 instructions (autocast is slower without them)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_autocast(precision: str, device_type: str, native_bf16: bool) -> torch.dtype | None:
    """The autocast dtype for `precision` on a device, or None for plain fp32.

    `fp32` never autocasts; `bf16` always does (on a GPU without bf16 that is
    an error rather than a silent slow path); `auto` uses bf16 where the
    device computes it natively (CPUs with AVX512-BF16/AMX, GPUs from Ampere).
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; expected auto, bf16 or fp32")
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device_type == "cuda" and not native_bf16:
            raise ValueError("precision bf16 needs a GPU with bf16 (Ampere or newer); use auto")
        return torch.bfloat16
    return torch.bfloat16 if native_bf16 else None


def native_bf16_here(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_supports_bf16()


def autocast_dtype(precision: str, device: torch.device | None = None) -> torch.dtype | None:
    """`choose_autocast` for a device of this machine (the CPU by default)."""
    device = device or torch.device("cpu")
    return choose_autocast(precision, device.type, native_bf16_here(device))
