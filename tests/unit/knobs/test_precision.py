"""precision.py: which precisions a device supports and what converting a model does."""

from __future__ import annotations

import pytest
import torch
from dssidecar.precision import (
    PRECISIONS,
    Fp8Linear,
    Int8WeightOnlyLinear,
    UnsupportedPrecisionError,
    convert_model,
    precision_plan,
    supported_precisions,
)
from torch import nn


class TinyMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def test_cpu_supports_everything_but_fp8_with_a_reason() -> None:
    reasons = supported_precisions("cpu")
    assert set(reasons) == set(PRECISIONS)
    assert all(reasons[name] is None for name in ("fp32", "bf16", "fp16", "int8", "int8_weight_only"))
    assert reasons["fp8"] is not None and "8.9" in reasons["fp8"]


def test_unknown_precision_names_the_choices() -> None:
    with pytest.raises(UnsupportedPrecisionError, match="fp32, bf16"):
        precision_plan("fp64", "cpu")


def test_fp8_on_cpu_is_refused_with_reason() -> None:
    with pytest.raises(UnsupportedPrecisionError, match="compute capability"):
        convert_model(TinyMlp(), "fp8", "cpu")


@pytest.mark.parametrize(("name", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16), ("int8", torch.float32)])
def test_plan_kv_dtype_follows_activations(name: str, dtype: torch.dtype) -> None:
    assert precision_plan(name, "cpu").kv_dtype == dtype


@pytest.mark.parametrize(("name", "tolerance"), [("bf16", 0.05), ("fp16", 0.01), ("int8", 0.05), ("int8_weight_only", 0.02)])
def test_converted_copy_stays_close_and_leaves_original(name: str, tolerance: float) -> None:
    model = TinyMlp()
    before = model.up.weight.clone()
    x = torch.randn(8, 64)
    reference = model(x)
    converted = convert_model(model, name, "cpu")
    plan = precision_plan(name, "cpu")
    out = converted(x.to(plan.activation_dtype)).float()
    relative_error = (out - reference).norm() / reference.norm()
    assert relative_error < tolerance
    assert torch.equal(model.up.weight, before) and model.up.weight.dtype == torch.float32


def test_int8_dynamic_replaces_linears_on_cpu() -> None:
    converted = convert_model(TinyMlp(), "int8", "cpu")
    assert "Quantized" in type(converted.up).__name__ or "quantized" in type(converted.up).__module__


def test_int8_weight_only_stores_int8_weights() -> None:
    converted = convert_model(TinyMlp(), "int8_weight_only", "cpu")
    assert isinstance(converted.up, Int8WeightOnlyLinear)
    assert converted.up.weight_int8.dtype == torch.int8


def test_fp8_linear_math_matches_on_the_dequantized_path() -> None:
    linear = TinyMlp().up
    fp8 = Fp8Linear.from_linear(linear, torch.float32)
    assert fp8.weight_fp8.dtype == torch.float8_e4m3fn
    x = torch.randn(4, 64)
    relative_error = (fp8(x) - linear(x)).norm() / linear(x).norm()
    assert relative_error < 0.08


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp8_and_int8_run_on_gpu() -> None:  # pragma: no cover - GPU only
    model = TinyMlp().cuda()
    x = torch.randn(32, 64, device="cuda")
    reference = model(x)
    for name, reason in supported_precisions("cuda").items():
        if reason is not None:
            continue
        plan = precision_plan(name, "cuda")
        out = convert_model(model, name, "cuda")(x.to(plan.activation_dtype)).float()
        assert (out - reference).norm() / reference.norm() < 0.1, name
