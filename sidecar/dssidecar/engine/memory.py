"""How well the KV pool is used: bytes held, bytes holding tokens, fragmentation.

Why this exists: a rule in the agent reacts to memory fragmentation and the knobs' status shows it; the
figures come from the block manager's accounting (and on CUDA from the caching allocator), so they are
read here, inside the engine, and handed out as plain numbers by `LLMEngine.memory_figures()`.

All bytes, ratios 0..1:
- reserved: KV blocks held by sequences; allocated: their slots that hold a token;
- kv fragmentation = 1 - allocated/reserved (unused slots in the last block of each sequence);
- on CUDA the process-wide figures come from the caching allocator (memory_reserved/allocated).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dssidecar.engine.block_manager import BlockManager
from dssidecar.engine.model_runner import ModelRunner
from dssidecar.engine.sequence import Sequence


def kv_memory_figures(manager: BlockManager, runner: ModelRunner, seqs: Iterable[Sequence]) -> dict[str, float]:
    """KV pool bytes, bytes held by sequences (reserved) and holding tokens (allocated), fragmentation."""
    block_size = int(manager.block_size)
    block_bytes = runner.kv_block_bytes
    used_blocks = len(manager.used_block_ids)
    unused_slots = 0
    for seq in seqs:
        table_len = len(seq.block_table)
        if table_len:
            filled = min(block_size, max(0, seq.num_tokens - (table_len - 1) * block_size))
            unused_slots += block_size - filled
    reserved_slots = used_blocks * block_size
    allocated_slots = max(0, reserved_slots - unused_slots)
    fragmentation = 0.0 if reserved_slots == 0 else 1.0 - allocated_slots / reserved_slots
    return {
        "kv_cache_pool_bytes": float(block_bytes * int(runner.num_blocks)),
        "kv_cache_reserved_bytes": float(used_blocks * block_bytes),
        "kv_cache_allocated_bytes": float(allocated_slots * block_bytes // block_size),
        "kv_cache_fragmentation_ratio": min(1.0, max(0.0, fragmentation)),
    }


def memory_figures(manager: BlockManager, runner: ModelRunner, seqs: Iterable[Sequence]) -> dict[str, float]:
    """reserved/allocated bytes and 1 - allocated/reserved: CUDA allocator on GPU, KV pool on CPU."""
    figures = kv_memory_figures(manager, runner, seqs)
    device = runner.device
    if device.type == "cuda":
        reserved = float(torch.cuda.memory_reserved(device))
        allocated = float(torch.cuda.memory_allocated(device))
    else:
        reserved = figures["kv_cache_reserved_bytes"]
        allocated = figures["kv_cache_allocated_bytes"]
    figures["memory_reserved_bytes"] = reserved
    figures["memory_allocated_bytes"] = allocated
    figures["memory_fragmentation_ratio"] = 0.0 if reserved <= 0 else min(1.0, max(0.0, 1.0 - allocated / reserved))
    return figures
