"""Write a small Qwen2/Llama checkpoint in Hugging Face format, made entirely on this machine.

No model hub is reachable, yet the engine, the server, the tests and the benchmarks all need a real
checkpoint: config.json, model.safetensors with HF parameter names, a byte-level BPE tokenizer.json, a
tokenizer_config.json with a chat template, generation_config.json and a sha256 manifest. This module
writes one from a seed, with no dependency beyond the sidecar extra (torch, safetensors, tokenizers):
the training model below is a plain-PyTorch decoder whose parameter names are HF's, so transformers'
Qwen2ForCausalLM/LlamaForCausalLM and our own engine load the result unchanged.

Random weights give near-flat next-token distributions, which make demos and precision checks
meaningless; `train_steps` runs a short AdamW next-token training loop on the shipped corpus so the
model has real structure. Everything is seeded: the same arguments write the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dssidecar.integrity import write_manifest

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "corpus.txt"
CORPUS_SECTION_SEPARATOR = "\n\n\n"
INITIALIZER_STD = 0.02


@dataclass(frozen=True)
class ModelSize:
    """Shape of a demo model (HF config field names)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    train_sequence_length: int
    train_batch_size: int
    train_learning_rate: float

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


SIZES: dict[str, ModelSize] = {
    # ~7M parameters: the tests' model; Python overhead dominates its speed. Training: 8 windows of 128
    # tokens per step; 200 steps bring the loss from 9.0 to ~6.2 (peaked, unigram/bigram-like next-token
    # distributions; greedy text still repeats). Text-like greedy output needs ~2000+ steps.
    "tiny": ModelSize(256, 1024, 4, 4, 2, 8000, 2048, 128, 8, 3e-3),
    # ~100M parameters (tied embeddings): what benchmarks use; memory-bandwidth bound on CPU.
    "small": ModelSize(768, 2048, 12, 12, 4, 32000, 2048, 128, 8, 1e-3),
}


@dataclass(frozen=True)
class ArchSpec:
    """What differs between the two families we write."""

    architecture: str
    model_type: str
    attention_bias: bool
    tie_word_embeddings: bool
    rope_theta: float
    rms_norm_eps: float
    special_tokens: tuple[str, ...]
    bos_token: str | None  # added by the tokenizer's post-processor when set
    eos_token: str  # config.json's eos (end of document)
    end_of_turn_token: str  # extra eos in generation_config.json (end of a chat turn)
    pad_token: str
    chat_template: str


QWEN2_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

ARCHS: dict[str, ArchSpec] = {
    "qwen2": ArchSpec(
        architecture="Qwen2ForCausalLM",
        model_type="qwen2",
        attention_bias=True,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None,
        eos_token="<|endoftext|>",
        end_of_turn_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN2_CHAT_TEMPLATE,
    ),
    "llama": ArchSpec(
        architecture="LlamaForCausalLM",
        model_type="llama",
        attention_bias=False,
        tie_word_embeddings=False,
        rope_theta=500_000.0,
        rms_norm_eps=1e-5,
        special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>"),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        end_of_turn_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        chat_template=LLAMA_CHAT_TEMPLATE,
    ),
}


# --------------------------------------------------------------------------------------------- tokenizer


def read_corpus_sections(corpus_path: Path = CORPUS_PATH) -> list[str]:
    """The shipped corpus split into sections (docstrings, module sources)."""
    text = corpus_path.read_text(encoding="utf-8")
    return [section for section in text.split(CORPUS_SECTION_SEPARATOR) if section.strip()]


def train_tokenizer(sections: list[str], arch: ArchSpec, vocab_size: int) -> Any:
    """Train a byte-level BPE `tokenizers.Tokenizer` with the family's special tokens (ids 0..k-1).

    The vocabulary may come out smaller than `vocab_size` when the corpus runs out of merges; the model's
    embedding keeps `vocab_size` rows regardless, as real checkpoints pad theirs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(arch.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sections, trainer=trainer, length=len(sections))
    if arch.bos_token is not None:
        bos_id = tokenizer.token_to_id(arch.bos_token)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{arch.bos_token} $A",
            pair=f"{arch.bos_token} $A {arch.bos_token} $B:1",
            special_tokens=[(arch.bos_token, bos_id)],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _tokenizer_config(arch: ArchSpec, tokenizer: Any, max_length: int) -> dict[str, Any]:
    added_tokens_decoder = {
        str(tokenizer.token_to_id(token)): {
            "content": token, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for token in arch.special_tokens
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": [t for t in arch.special_tokens
                                      if t not in (arch.bos_token, arch.eos_token, arch.pad_token)],
        "bos_token": arch.bos_token,
        "eos_token": arch.end_of_turn_token,
        "pad_token": arch.pad_token,
        "unk_token": None,
        "add_bos_token": arch.bos_token is not None,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "padding_side": "left",
        "chat_template": arch.chat_template,
    }


# ------------------------------------------------------------------------------------ training model


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden * torch.rsqrt(variance + self.eps))


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's default RoPE tables (non-interleaved halves), shape [seq, head_dim]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class Attention(nn.Module):
    def __init__(self, size: ModelSize, bias: bool) -> None:
        super().__init__()
        self.num_heads = size.num_attention_heads
        self.num_kv_heads = size.num_key_value_heads
        self.head_dim = size.head_dim
        self.q_proj = nn.Linear(size.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(size.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(size.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, size.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        repeat = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(repeat, dim=1)
        v = v.repeat_interleave(repeat, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(size.hidden_size, size.intermediate_size, bias=False)
        self.up_proj = nn.Linear(size.hidden_size, size.intermediate_size, bias=False)
        self.down_proj = nn.Linear(size.intermediate_size, size.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden)) * self.up_proj(hidden))


class DecoderLayer(nn.Module):
    def __init__(self, size: ModelSize, arch: ArchSpec) -> None:
        super().__init__()
        self.self_attn = Attention(size, arch.attention_bias)
        self.mlp = MLP(size)
        self.input_layernorm = RMSNorm(size.hidden_size, arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(size.hidden_size, arch.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DecoderBody(nn.Module):
    """HF's `model.` prefix: embeddings, layers, final norm."""

    def __init__(self, size: ModelSize, arch: ArchSpec) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(size.vocab_size, size.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(size, arch) for _ in range(size.num_hidden_layers))
        self.norm = RMSNorm(size.hidden_size, arch.rms_norm_eps)


class DemoCausalLM(nn.Module):
    """A training-only Qwen2/Llama decoder whose state_dict keys are HF's (model.layers.N.self_attn...)."""

    def __init__(self, size: ModelSize, arch: ArchSpec) -> None:
        super().__init__()
        self.size = size
        self.arch = arch
        self.model = DecoderBody(size, arch)
        self.lm_head = nn.Linear(size.hidden_size, size.vocab_size, bias=False)
        if arch.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def initialize(self, generator: torch.Generator) -> None:
        """HF's init (normal(0, 0.02) for matrices, zero biases, unit norms), drawn in name order."""
        with torch.no_grad():
            for name, param in self.named_parameters():  # tied lm_head is listed once
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                elif name.endswith(".bias"):
                    param.zero_()
                else:
                    param.normal_(0.0, INITIALIZER_STD, generator=generator)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1])
        cos, sin = rotary_cos_sin(positions, self.size.head_dim, self.arch.rope_theta)
        hidden = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            hidden = layer(hidden, cos, sin)
        return self.lm_head(self.model.norm(hidden))

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Contiguous fp32 tensors under HF names; lm_head.weight left out when tied (as HF saves it)."""
        state = {name: tensor.detach().contiguous().clone() for name, tensor in self.state_dict().items()}
        if self.arch.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        return state


def count_parameters(model: nn.Module) -> int:
    return sum(param.numel() for param in model.parameters())


# ------------------------------------------------------------------------------------------ training


def _token_stream(sections: list[str], tokenizer: Any, separator_id: int) -> torch.Tensor:
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(sections, add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(separator_id)
    return torch.tensor(ids, dtype=torch.int64)


def train_model(
    model: DemoCausalLM,
    tokens: torch.Tensor,
    train_steps: int,
    generator: torch.Generator,
    log: Callable[[str], None],
) -> list[float]:
    """AdamW next-token training on random windows of `tokens`; returns the loss of every step."""
    size = model.size
    window = size.train_sequence_length + 1
    if tokens.numel() <= window:
        raise ValueError(f"training corpus has {tokens.numel()} tokens; need more than {window}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=size.train_learning_rate, betas=(0.9, 0.95),
                                  weight_decay=0.01, eps=1e-8)
    warmup_steps = max(1, train_steps // 10)

    def learning_rate_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, train_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    losses: list[float] = []
    started = time.monotonic()
    log_every = max(1, train_steps // 10)
    model.train()
    for step in range(train_steps):
        starts = torch.randint(0, tokens.numel() - window, (size.train_batch_size,), generator=generator)
        batch = torch.stack([tokens[start : start + window] for start in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.item()))
        if (step + 1) % log_every == 0 or step + 1 == train_steps:
            elapsed = time.monotonic() - started
            log(f"train step {step + 1}/{train_steps} loss {losses[-1]:.3f} ({elapsed:.1f} s)")
    model.eval()
    return losses


# ------------------------------------------------------------------------------------------- writing


def _config_json(size: ModelSize, arch: ArchSpec, tokenizer: Any) -> dict[str, Any]:
    bos_token = arch.bos_token or arch.eos_token  # Qwen2 configs name <|endoftext|> as bos too
    config: dict[str, Any] = {
        "architectures": [arch.architecture],
        "model_type": arch.model_type,
        "hidden_size": size.hidden_size,
        "intermediate_size": size.intermediate_size,
        "num_hidden_layers": size.num_hidden_layers,
        "num_attention_heads": size.num_attention_heads,
        "num_key_value_heads": size.num_key_value_heads,
        "head_dim": size.head_dim,
        "hidden_act": "silu",
        "vocab_size": size.vocab_size,
        "max_position_embeddings": size.max_position_embeddings,
        "rope_theta": arch.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": arch.rms_norm_eps,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "torch_dtype": "float32",
        "bos_token_id": tokenizer.token_to_id(bos_token),
        "eos_token_id": tokenizer.token_to_id(arch.eos_token),
        "initializer_range": INITIALIZER_STD,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if arch.model_type == "qwen2":
        config.update({"use_sliding_window": False, "sliding_window": None,
                       "max_window_layers": size.num_hidden_layers})
    else:
        config.update({"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1})
    return config


def _generation_config_json(arch: ArchSpec, tokenizer: Any) -> dict[str, Any]:
    bos_token = arch.bos_token or arch.eos_token
    return {
        "bos_token_id": tokenizer.token_to_id(bos_token),
        "eos_token_id": [tokenizer.token_to_id(arch.end_of_turn_token), tokenizer.token_to_id(arch.eos_token)],
        "pad_token_id": tokenizer.token_to_id(arch.pad_token),
        "do_sample": False,
    }


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _install_atomically(staging_dir: Path, target: Path) -> None:
    """Move a finished staging dir onto `target`, replacing an earlier model there but nothing else."""
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a directory; choose another path")
        entries = list(target.iterdir())
        looks_like_model = (target / "config.json").exists() or (target / "manifest.json").exists()
        if entries and not looks_like_model:
            raise FileExistsError(
                f"{target} is a non-empty directory that is not a model checkpoint; refusing to replace it"
            )
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging_dir, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging_dir, target)


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_demo_model(
    path: Path | str,
    size: str = "tiny",
    seed: int = 0,
    arch: str = "qwen2",
    train_steps: int = 0,
    log: Callable[[str], None] | None = _stderr_log,
) -> Path:
    """Write a complete HF-format checkpoint to `path` (atomically) and return it.

    The same (size, seed, arch, train_steps) write byte-identical files on the same torch build.
    """
    if size not in SIZES:
        raise ValueError(f"size {size!r} is not one of {sorted(SIZES)}")
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {sorted(ARCHS)}")
    if train_steps < 0:
        raise ValueError(f"train_steps must be >= 0, got {train_steps}")
    emit = log or (lambda _message: None)
    model_size, arch_spec = SIZES[size], ARCHS[arch]
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    sections = read_corpus_sections()
    tokenizer = train_tokenizer(sections, arch_spec, model_size.vocab_size)
    emit(f"tokenizer: {tokenizer.get_vocab_size()} tokens trained on {CORPUS_PATH.name} "
         f"({time.monotonic() - started:.1f} s)")

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DemoCausalLM(model_size, arch_spec)
        model.initialize(generator)
        emit(f"model: {arch_spec.architecture} {size}, {count_parameters(model) / 1e6:.1f}M parameters")
        if train_steps > 0:
            tokens = _token_stream(sections, tokenizer, tokenizer.token_to_id(arch_spec.eos_token))
            emit(f"training {train_steps} steps on {tokens.numel()} tokens")
            train_model(model, tokens, train_steps, generator, emit)

    staging_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        from safetensors.torch import save_file

        save_file(model.hf_state_dict(), str(staging_dir / "model.safetensors"), metadata={"format": "pt"})
        _write_json(staging_dir / "config.json", _config_json(model_size, arch_spec, tokenizer))
        _write_json(staging_dir / "generation_config.json", _generation_config_json(arch_spec, tokenizer))
        tokenizer.save(str(staging_dir / "tokenizer.json"))
        _write_json(staging_dir / "tokenizer_config.json",
                    _tokenizer_config(arch_spec, tokenizer, model_size.max_position_embeddings))
        _write_json(staging_dir / "special_tokens_map.json", {
            key: value for key, value in (("bos_token", arch_spec.bos_token),
                                          ("eos_token", arch_spec.end_of_turn_token),
                                          ("pad_token", arch_spec.pad_token)) if value is not None
        })
        write_manifest(staging_dir)
        staging_dir.chmod(0o755)
        _install_atomically(staging_dir, target)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    emit(f"wrote {target} ({time.monotonic() - started:.1f} s)")
    return target
