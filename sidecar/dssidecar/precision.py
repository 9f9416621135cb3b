"""Turn a loaded fp32 model into another numeric precision, and say which precisions a device can run.

Why this exists: the `precision` knob swaps the engine's runner for one whose weights are converted; the
conversion (and the honest answer "not on this device, because ...") lives here so the knob controller,
`check-precision` and the benchmark all agree on what each name means.

Names (the knob's allowed values):
- fp32, bf16, fp16: the whole model and its KV cache in that dtype.
- int8: weights in int8. On CPU dynamic quantization of every nn.Linear (torchao if installed, else
  torch.ao.quantization.quantize_dynamic: int8 weights, activations quantized per batch); on CUDA
  weight-only int8 (per-output-channel scales, dequantized inside the matmul) with bf16 activations.
- int8_weight_only: weight-only int8 everywhere (fp32 activations on CPU, bf16 on CUDA).
- fp8: float8_e4m3 weights with a per-output-channel scale and dynamically scaled fp8 activations
  through torch._scaled_mm; only on GPUs with fp8 tensor cores (compute capability >= 8.9: Ada, Hopper).

The KV cache follows the activation dtype (`PrecisionPlan.kv_dtype`): switching between precisions with
different KV dtypes means in-flight sequences are re-prefilled.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8", "int8_weight_only", "fp8")


class UnsupportedPrecisionError(ValueError):
    """The precision cannot run on this device; the message says why."""


@dataclass(frozen=True)
class PrecisionPlan:
    """What one precision name means on one device."""

    name: str
    device_type: str
    activation_dtype: torch.dtype  # dtype of hidden states, logits and the KV cache
    weight_format: str  # dense | int8_dynamic | int8_weight_only | fp8

    @property
    def kv_dtype(self) -> torch.dtype:
        return self.activation_dtype


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def _torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


def _cuda_capability(device: torch.device | str) -> tuple[int, int] | None:
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(dev)


def supported_precisions(device: torch.device | str) -> dict[str, str | None]:
    """Every precision name -> None when it runs on `device`, else the reason it does not."""
    device_type = _device_type(device)
    reasons: dict[str, str | None] = dict.fromkeys(PRECISIONS)
    if device_type == "cpu":
        engines = torch.backends.quantized.supported_engines
        if not _torchao_available() and not any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack")):
            reasons["int8"] = f"no int8 kernels: torchao is not installed and torch has no quantized engine ({engines})"
        reasons["fp8"] = (
            "fp8 needs an NVIDIA GPU with fp8 tensor cores (compute capability >= 8.9, Ada or Hopper); "
            "this device is the CPU"
        )
    elif device_type == "cuda":
        capability = _cuda_capability(device)
        if capability is None:
            return dict.fromkeys(PRECISIONS, "CUDA is not available in this process")
        if not torch.cuda.is_bf16_supported():
            reasons["bf16"] = f"this GPU (compute capability {capability[0]}.{capability[1]}) has no bf16 support"
            reasons["int8"] = reasons["int8_weight_only"] = "int8 on CUDA runs with bf16 activations, which this GPU lacks"
        if capability < (8, 9) or not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
            reasons["fp8"] = (
                f"fp8 needs compute capability >= 8.9 (Ada or Hopper) and torch._scaled_mm; this GPU is "
                f"{capability[0]}.{capability[1]} with torch {torch.__version__}"
            )
    else:
        for name in PRECISIONS:
            if name != "fp32":
                reasons[name] = f"only fp32 is implemented for device type {device_type!r}"
    return reasons


def precision_plan(name: str, device: torch.device | str) -> PrecisionPlan:
    """The plan for `name` on `device`; raises UnsupportedPrecisionError with the reason when it cannot run."""
    if name not in PRECISIONS:
        raise UnsupportedPrecisionError(f"unknown precision {name!r}; expected one of {', '.join(PRECISIONS)}")
    reason = supported_precisions(device)[name]
    if reason is not None:
        raise UnsupportedPrecisionError(f"precision {name} is not supported on {device}: {reason}")
    device_type = _device_type(device)
    low_precision_activations = torch.bfloat16
    if name == "fp32":
        return PrecisionPlan(name, device_type, torch.float32, "dense")
    if name == "bf16":
        return PrecisionPlan(name, device_type, torch.bfloat16, "dense")
    if name == "fp16":
        return PrecisionPlan(name, device_type, torch.float16, "dense")
    if name == "int8":
        if device_type == "cpu":
            return PrecisionPlan(name, device_type, torch.float32, "int8_dynamic")
        return PrecisionPlan(name, device_type, low_precision_activations, "int8_weight_only")
    if name == "int8_weight_only":
        activations = torch.float32 if device_type == "cpu" else low_precision_activations
        return PrecisionPlan(name, device_type, activations, "int8_weight_only")
    return PrecisionPlan(name, device_type, low_precision_activations, "fp8")


class Int8WeightOnlyLinear(nn.Module):
    """nn.Linear with int8 weights and one scale per output channel; dequantized inside forward."""

    weight_int8: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = weight_int8.shape[1]
        self.out_features = weight_int8.shape[0]
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation_dtype: torch.dtype) -> Int8WeightOnlyLinear:
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        weight_int8 = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().to(activation_dtype)
        return cls(weight_int8, scale.to(activation_dtype), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight_int8.to(x.dtype)) * self.scale.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out


class Fp8Linear(nn.Module):
    """nn.Linear with float8_e4m3 weights (per-output-channel scale) and dynamically scaled fp8 inputs.

    Uses torch._scaled_mm (fp8 tensor cores) when the shapes allow it (multiples of 16), otherwise
    dequantizes the weight for that call so any shape stays correct.
    """

    FP8_MAX = 448.0
    weight_fp8: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight_fp8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features = weight_fp8.shape[1]
        self.out_features = weight_fp8.shape[0]
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("scale", scale)  # float32 [out]
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation_dtype: torch.dtype) -> Fp8Linear:
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / cls.FP8_MAX
        weight_fp8 = (weight / scale[:, None]).clamp(-cls.FP8_MAX, cls.FP8_MAX).to(torch.float8_e4m3fn)
        bias = None if linear.bias is None else linear.bias.detach().to(activation_dtype)
        return cls(weight_fp8, scale.float(), bias)

    def _dequantized_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_fp8.to(x.dtype) * self.scale.to(x.dtype)[:, None]
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(1, x.shape[-1])
        if x.device.type != "cuda" or self.in_features % 16 or self.out_features % 16 or rows % 16:
            return self._dequantized_forward(x)
        flat = x.reshape(-1, self.in_features)
        x_scale = flat.abs().amax().float().clamp(min=1e-12) / self.FP8_MAX
        x_fp8 = (flat.float() / x_scale).clamp(-self.FP8_MAX, self.FP8_MAX).to(torch.float8_e4m3fn)
        ones = torch.ones((), device=x.device, dtype=torch.float32)
        out = torch._scaled_mm(x_fp8, self.weight_fp8.t(), scale_a=x_scale, scale_b=ones, out_dtype=x.dtype)
        out = out * self.scale.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def _replace_linears(module: nn.Module, make: type[Int8WeightOnlyLinear] | type[Fp8Linear], dtype: torch.dtype) -> int:
    replaced = 0
    for child_name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, child_name, make.from_linear(child, dtype))
            replaced += 1
        else:
            replaced += _replace_linears(child, make, dtype)
    return replaced


def _quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    if _torchao_available():  # pragma: no cover - torchao is not installed on the CI machine
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def _keep_rotary_fp32(model: nn.Module) -> nn.Module:
    """RoPE tables stay fp32 whatever the weights are (positions beyond ~256 lose accuracy in bf16)."""
    for module_name, module in model.named_modules():
        if module_name.split(".")[-1] == "rotary":
            module.float()
    return model


def convert_model(model: nn.Module, name: str, device: torch.device | str) -> nn.Module:
    """A converted copy of an fp32 `model` for precision `name`; the original is left untouched.

    Raises UnsupportedPrecisionError (with the reason) when `name` cannot run on `device`.
    """
    plan = precision_plan(name, device)
    converted = copy.deepcopy(model)
    if plan.weight_format == "dense":
        return _keep_rotary_fp32(converted.to(dtype=plan.activation_dtype))
    if plan.weight_format == "int8_dynamic":
        return _quantize_dynamic_int8(converted.float())
    converted = _keep_rotary_fp32(converted.to(dtype=plan.activation_dtype))
    linear_class: type[Int8WeightOnlyLinear] | type[Fp8Linear] = (
        Int8WeightOnlyLinear if plan.weight_format == "int8_weight_only" else Fp8Linear
    )
    replaced = _replace_linears(converted, linear_class, plan.activation_dtype)
    if replaced == 0:
        raise UnsupportedPrecisionError(f"precision {name}: the model has no nn.Linear layers to quantize")
    return converted
