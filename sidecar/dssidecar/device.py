"""Pick the torch device and dtype the engine runs on.

One place decides "auto" (CUDA when a GPU is visible, else CPU) and the CPU thread count, so the
engine, the benchmarks and the CLI agree. Imports torch: only the sidecar uses this module.
"""

from __future__ import annotations

import os

import torch

PRECISION_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    # int8 keeps fp32 activations and quantizes Linear weights (see models.loader)
    "int8": torch.float32,
}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available else cpu; 'cpu', 'cuda', 'cuda:1' are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ValueError(f"device {name!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    return torch.device(name)


def resolve_dtype(precision: str) -> torch.dtype:
    """Activation/weight dtype for a precision knob value ('fp32', 'bf16', 'fp16', 'int8')."""
    try:
        return PRECISION_DTYPES[precision.lower()]
    except KeyError:
        raise ValueError(
            f"precision {precision!r} is not one of {sorted(set(PRECISION_DTYPES))}"
        ) from None


def configure_cpu_threads(num_threads: int | None = None) -> int:
    """Use every core the process may run on (or DSSIDECAR_NUM_THREADS / the argument)."""
    if num_threads is None:
        env_value = os.environ.get("DSSIDECAR_NUM_THREADS")
        if env_value:
            num_threads = int(env_value)
        else:
            try:
                num_threads = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                num_threads = os.cpu_count() or 1
    num_threads = max(1, num_threads)
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return num_threads


def device_memory_available_bytes(device: torch.device) -> int:
    """Free memory on the device: CUDA free memory, or the host's available RAM for CPU."""
    if device.type == "cuda":
        free_bytes, _total = torch.cuda.mem_get_info(device)
        return int(free_bytes)
    import psutil

    return int(psutil.virtual_memory().available)
