"""Execution backends for the model's forward: eager, torch.compile, TensorRT (lazy), CUDA graphs.

Why this exists: the `backend` knob swaps how the same weights are executed. Each backend here takes a
model (already converted to its precision) and returns a callable with the model's forward signature, or
raises UnsupportedBackendError with the reason (no torch_tensorrt, no GPU, ...). Warm-up happens in the
runner swap (knobs), which knows what a representative batch looks like.
"""

from __future__ import annotations

from dssidecar.backends.registry import (
    BACKENDS,
    UnsupportedBackendError,
    apply_backend,
    supported_backends,
)

__all__ = ["BACKENDS", "UnsupportedBackendError", "apply_backend", "supported_backends"]
