"""Backend names, their availability on a device, and applying one to a model.

`eager` runs the module as is. `torch.compile` uses inductor with dynamic shapes (batch size and token
count vary every step) so a steady stream of steps does not recompile. `tensorrt` needs the optional
torch-tensorrt package and a CUDA GPU and is imported only when asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

BACKENDS: tuple[str, ...] = ("eager", "torch.compile", "tensorrt")


class UnsupportedBackendError(ValueError):
    """The backend cannot run here; the message says why."""


def _tensorrt_reason(device_type: str) -> str | None:
    if device_type != "cuda":
        return f"TensorRT runs only on NVIDIA GPUs; this device is {device_type}"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch_tensorrt is not installed (pip install 'dsagent[tensorrt]')"
    return None


def _compile_reason(device_type: str) -> str | None:
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device_type not in ("cpu", "cuda"):
        return f"torch.compile is not enabled for device type {device_type!r} here"
    return None


def supported_backends(device: torch.device | str) -> dict[str, str | None]:
    """Every backend name -> None when it runs on `device`, else the reason it does not."""
    device_type = torch.device(device).type
    return {
        "eager": None,
        "torch.compile": _compile_reason(device_type),
        "tensorrt": _tensorrt_reason(device_type),
    }


def apply_backend(model: nn.Module, name: str, device: torch.device | str) -> Callable[..., Any]:
    """A callable running `model`'s forward with backend `name`. Raises UnsupportedBackendError."""
    if name not in BACKENDS:
        raise UnsupportedBackendError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    reason = supported_backends(device)[name]
    if reason is not None:
        raise UnsupportedBackendError(f"backend {name} is not available on {device}: {reason}")
    if name == "eager":
        return model
    if name == "torch.compile":
        # prefill, chunked prefill and decode pass differently shaped metadata (None vs tensors): each is a
        # graph of its own, so allow more variants than dynamo's default before it falls back to eager
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(int(torch._dynamo.config.recompile_limit), 64)
        return torch.compile(model, dynamic=True)
    from dssidecar.backends.tensorrt import (
        compile_tensorrt,  # pragma: no cover - needs a GPU and torch_tensorrt
    )

    return compile_tensorrt(model)  # pragma: no cover
