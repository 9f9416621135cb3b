"""Load a local Hugging Face-format Llama/Qwen2 checkpoint into the engine's model.

Order matters: the sha256 manifest (when present) is checked before any weight is read, so a corrupt
or swapped file refuses to start with its name in the message. HF parameter names are mapped onto the
fused modules of `LlamaForCausalLM` (q/k/v -> qkv_proj, gate/up -> gate_up_proj); a missing or
mis-shaped tensor is an error naming the tensor and the file it should come from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from dssidecar.integrity import verify_manifest
from dssidecar.models.config import ModelConfig
from dssidecar.models.llama import LlamaForCausalLM
from dssidecar.models.tokenizer import HFTokenizer

logger = logging.getLogger("dssidecar.models.loader")


class CheckpointError(ValueError):
    """The checkpoint directory is incomplete or does not match its config; the message names the file."""


@dataclass
class LoadedCheckpoint:
    model: LlamaForCausalLM
    tokenizer: HFTokenizer
    config: ModelConfig
    path: Path

    def __iter__(self):  # type: ignore[no-untyped-def]
        """Allows `model, tokenizer, config = load_checkpoint(...)`."""
        return iter((self.model, self.tokenizer, self.config))


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the index's shards, or every *.safetensors file."""
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        names = sorted(set(index.get("weight_map", {}).values()))
        files = [model_dir / name for name in names]
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{file} is listed in {index_path} but missing")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{model_dir} holds no *.safetensors weights (PyTorch .bin checkpoints are not supported; "
            "convert them with safetensors first)"
        )
    return files


def read_hf_tensors(files: list[Path]) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    tensors[name] = handle.get_tensor(name)
                    origin[name] = file
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc
    return tensors, origin


def map_hf_state_dict(
    config: ModelConfig, hf: dict[str, torch.Tensor], files: list[Path]
) -> dict[str, torch.Tensor]:
    """HF names -> this model's names, fusing q/k/v and gate/up."""
    where = ", ".join(str(f) for f in files)

    def take(name: str) -> torch.Tensor:
        for candidate in (name, name.removeprefix("model.")):
            if candidate in hf:
                return hf[candidate]
        raise CheckpointError(f"tensor {name!r} is missing from the checkpoint weights ({where})")

    state: dict[str, torch.Tensor] = {
        "embed_tokens.weight": take("model.embed_tokens.weight"),
        "norm.weight": take("model.norm.weight"),
    }
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    else:
        state["lm_head.weight"] = hf["lm_head.weight"] if "lm_head.weight" in hf else take("lm_head.weight")
    for i in range(config.num_hidden_layers):
        src = f"model.layers.{i}"
        dst = f"layers.{i}"
        state[f"{dst}.self_attn.qkv_proj.weight"] = torch.cat(
            [take(f"{src}.self_attn.{p}_proj.weight") for p in ("q", "k", "v")], dim=0
        )
        if config.attention_bias:
            state[f"{dst}.self_attn.qkv_proj.bias"] = torch.cat(
                [take(f"{src}.self_attn.{p}_proj.bias") for p in ("q", "k", "v")], dim=0
            )
        state[f"{dst}.self_attn.o_proj.weight"] = take(f"{src}.self_attn.o_proj.weight")
        state[f"{dst}.mlp.gate_up_proj.weight"] = torch.cat(
            [take(f"{src}.mlp.gate_proj.weight"), take(f"{src}.mlp.up_proj.weight")], dim=0
        )
        if config.mlp_bias:
            state[f"{dst}.mlp.gate_up_proj.bias"] = torch.cat(
                [take(f"{src}.mlp.gate_proj.bias"), take(f"{src}.mlp.up_proj.bias")], dim=0
            )
            state[f"{dst}.mlp.down_proj.bias"] = take(f"{src}.mlp.down_proj.bias")
        state[f"{dst}.mlp.down_proj.weight"] = take(f"{src}.mlp.down_proj.weight")
        state[f"{dst}.input_layernorm.weight"] = take(f"{src}.input_layernorm.weight")
        state[f"{dst}.post_attention_layernorm.weight"] = take(f"{src}.post_attention_layernorm.weight")
    return state


def build_model(
    config: ModelConfig, state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    expected = dict(model.state_dict())
    for name, param in expected.items():
        tensor = state.get(name)
        if tensor is None:
            raise CheckpointError(f"tensor {name!r} was not produced from the checkpoint")
        if tuple(tensor.shape) != tuple(param.shape):
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(tensor.shape)} but config.json implies {tuple(param.shape)}"
            )
    model = model.to_empty(device=device)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=False)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    # buffers (RoPE tables) were on meta: rebuild them for real on the device, in fp32
    model.rotary = type(model.rotary)(config).to(device)
    model.to(dtype)
    model.rotary.to(torch.float32)
    model.eval()
    model.requires_grad_(False)
    return model


def load_checkpoint(
    model_dir: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> LoadedCheckpoint:
    """Verify (manifest.json), then load config, weights and tokenizer from a local directory."""
    path = Path(model_dir)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist or is not a directory")
    if verify:
        verify_manifest(path)
    config = ModelConfig.from_file(path / "config.json")
    files = weight_files(path)
    hf_tensors, _origin = read_hf_tensors(files)
    state = map_hf_state_dict(config, hf_tensors, files)
    model = build_model(config, state, torch.device(device), dtype)
    tokenizer = HFTokenizer.from_dir(path, config_eos_token_ids=config.eos_token_ids)
    logger.info(
        "loaded %s (%s, %d layers, ~%.1fM parameters) on %s as %s",
        path, config.model_type, config.num_hidden_layers, config.num_parameters_estimate / 1e6, device, dtype,
    )
    return LoadedCheckpoint(model=model, tokenizer=tokenizer, config=config, path=path)
