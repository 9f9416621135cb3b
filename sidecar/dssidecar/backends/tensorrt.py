"""TensorRT through torch-tensorrt, imported only when the backend is chosen (GPU hosts with the extra)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


def compile_tensorrt(model: nn.Module) -> Callable[..., Any]:  # pragma: no cover - needs torch_tensorrt + GPU
    import torch
    import torch_tensorrt  # noqa: F401  (registers the "tensorrt" dynamo backend)

    return torch.compile(model, backend="tensorrt", dynamic=True)
