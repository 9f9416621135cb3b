"""EngineConfig: the engine's settings, including the knobs that can change while it runs.

`max_batch_size` and `max_num_batched_tokens` are read by the scheduler every step (the knobs change them
live through `LLMEngine.set_limits`); `precision` and `backend` need a new runner (see
LLMEngine.replace_runner); `kv_cache_blocks` sizes the KV pool (None: from a memory budget;
LLMEngine.resize_kv_pool changes it live).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    max_batch_size: int = 32
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_blocks: int | None = None  # None: sized from kv_cache_memory_* below
    # CPU: this fraction of available RAM, capped at kv_cache_memory_max_bytes; CUDA: fraction of free memory
    kv_cache_memory_fraction: float = 0.2
    kv_cache_memory_max_bytes: int = 512 << 20
    kv_cache_gpu_memory_fraction: float = 0.85
    max_waiting_requests: int = 256
    precision: str = "fp32"
    backend: str = "eager"
    device: str = "auto"
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    num_threads: int | None = None  # CPU threads; None: every core this process may use
    model_name: str | None = None  # served model id; None: the checkpoint directory's name

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        checks = {
            "max_batch_size": self.max_batch_size >= 1,
            "max_num_batched_tokens": self.max_num_batched_tokens >= 1,
            "block_size": self.block_size >= 1,
            "max_waiting_requests": self.max_waiting_requests >= 0,
            "kv_cache_memory_fraction": 0 < self.kv_cache_memory_fraction <= 1,
            "kv_cache_gpu_memory_fraction": 0 < self.kv_cache_gpu_memory_fraction <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"EngineConfig.{name}={getattr(self, name)!r} is out of range")
        if self.kv_cache_blocks is not None and self.kv_cache_blocks < 1:
            raise ValueError(f"EngineConfig.kv_cache_blocks={self.kv_cache_blocks!r} must be >= 1 or None (auto)")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"EngineConfig.max_model_len={self.max_model_len!r} must be >= 2 or None")
