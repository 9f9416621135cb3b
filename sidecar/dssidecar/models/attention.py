"""Paged attention over the engine's KV pool, in plain PyTorch (SDPA does the math).

The KV pool is one tensor [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]. Each step
the model runner builds one `AttentionMetadata` (shared by every layer) that says where this step's
new keys/values go (`slot_mapping`, a flat index block_id * block_size + offset) and, when attention
must read earlier tokens from the pool, which blocks each sequence owns (`block_tables`).

Three shapes of step:
- prefill of fresh prompts: tokens of several sequences are packed [T, ...] for the linear layers;
  attention is one causal SDPA per sequence over its slice (varlen). On this CPU that measured 5-17%
  faster per prefill step than scattering into a padded [B, L] batch.
- prefill with context (prefix-cache hit, chunked prompt, recompute after preemption of a partially
  cached prompt): queries are padded to [B, L], keys come from the pool by block table and the mask
  is "key position <= query position".
- decode: one query per sequence; keys gathered from the pool by block table, masked by length. The
  GQA query heads that share a KV head are folded into SDPA's query-length axis, so no K/V repeat.
- mixed (continuous batching as vLLM V1 does it): prompt chunks and decode tokens in one step; the
  linear layers see all tokens packed, attention runs the prefill shape on the first
  `num_prefill_tokens` and the decode shape on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    is_prefill: bool
    slot_mapping: torch.Tensor  # [T] int64 flat slot for each new token
    num_seqs: int
    # prefill only
    max_query_len: int = 0
    pad_index: torch.Tensor | None = None  # [T] index into the padded [B * max_query_len] batch
    query_lens: list[int] | None = None  # new tokens of each sequence, in packing order
    # prefill with context, and decode
    block_tables: torch.Tensor | None = None  # [B, max_blocks] int64 (padding points at block 0)
    attn_mask: torch.Tensor | None = None  # additive (0 or -inf), [B, 1, Lq, Lk]
    # decode only: rows [start, end) sorted by context length, each with its own (narrower) block
    # tables and mask, so short sequences do not pay for the longest one's padding
    decode_groups: list[tuple[int, int, torch.Tensor, torch.Tensor]] | None = None
    # a mixed step (is_prefill with decode_groups): tokens [0, num_prefill_tokens) are prompt chunks
    # described by the prefill fields, the rest one decode token per sequence described by decode_groups
    num_prefill_tokens: int | None = None

    @property
    def reads_pool(self) -> bool:
        return self.block_tables is not None


def write_kv(kv_layer: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Store this step's keys/values [T, kv_heads, head_dim] into their slots of one layer's pool."""
    num_blocks, block_size, num_kv_heads, head_dim = kv_layer.shape[1:]
    flat = kv_layer.view(2, num_blocks * block_size, num_kv_heads, head_dim)
    flat[0].index_copy_(0, slot_mapping, k)
    flat[1].index_copy_(0, slot_mapping, v)


def gather_kv(kv_layer: torch.Tensor, block_tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of each sequence's blocks as [B, kv_heads, max_blocks * block_size, head_dim]."""
    _two, num_blocks, block_size, num_kv_heads, head_dim = kv_layer.shape
    batch, max_blocks = block_tables.shape
    # index_select copies whole blocks (contiguous rows): ~4x faster on CPU than advanced indexing
    gathered = kv_layer.view(2, num_blocks, -1).index_select(1, block_tables.reshape(-1))
    gathered = gathered.view(2, batch, max_blocks * block_size, num_kv_heads, head_dim).transpose(2, 3)
    return gathered[0], gathered[1]


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_layer: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """q [T, heads, head_dim], k/v [T, kv_heads, head_dim] -> attention output [T, heads * head_dim]."""
    write_kv(kv_layer, meta.slot_mapping, k, v)
    if not meta.is_prefill:
        return _decode_attention(q, kv_layer, meta, scale)
    split = meta.num_prefill_tokens
    if split is None or meta.decode_groups is None:
        return _prefill_attention(q, k, v, kv_layer, meta, scale)
    # a mixed step: prompt chunks first, then one decode token per running sequence
    num_tokens, num_heads, head_dim = q.shape
    out = q.new_empty(num_tokens, num_heads * head_dim)
    out[:split] = _prefill_attention(q[:split], k[:split], v[:split], kv_layer, meta, scale)
    out[split:] = _decode_attention(q[split:], kv_layer, meta, scale)
    return out


def _decode_attention(q: torch.Tensor, kv_layer: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """One query per sequence; keys from the pool, masked by length. The query heads sharing a KV head
    are folded into SDPA's query axis: [B, kv_heads, group, head_dim], so no K/V repeat."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = kv_layer.shape[3]
    group = num_heads // num_kv_heads
    q4 = q.view(num_tokens, num_kv_heads, group, head_dim)
    if meta.decode_groups is None:
        keys, values = gather_kv(kv_layer, meta.block_tables)  # type: ignore[arg-type]
        out = F.scaled_dot_product_attention(q4, keys, values, attn_mask=meta.attn_mask, scale=scale)
        return out.reshape(num_tokens, num_heads * head_dim)
    out = q4.new_empty(q4.shape)
    for start, end, block_tables, attn_mask in meta.decode_groups:
        keys, values = gather_kv(kv_layer, block_tables)
        out[start:end] = F.scaled_dot_product_attention(q4[start:end], keys, values, attn_mask=attn_mask, scale=scale)
    return out.view(num_tokens, num_heads * head_dim)


def _prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_layer: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    batch, max_len = meta.num_seqs, meta.max_query_len
    if not meta.reads_pool:
        # fresh prompts: one causal SDPA per sequence over its slice of the packed tokens ("varlen");
        # measured faster on CPU than padding the batch (no wasted rows, no scatter/gather copies)
        query_lens = meta.query_lens if meta.query_lens is not None else [num_tokens]
        out = q.new_empty(num_tokens, num_heads * head_dim)
        start = 0
        for length in query_lens:
            end = start + length
            out[start:end] = (
                F.scaled_dot_product_attention(
                    q[start:end].transpose(0, 1).unsqueeze(0),
                    k[start:end].transpose(0, 1).unsqueeze(0),
                    v[start:end].transpose(0, 1).unsqueeze(0),
                    is_causal=True,
                    scale=scale,
                    enable_gqa=group > 1,
                )[0]
                .transpose(0, 1)
                .reshape(length, num_heads * head_dim)
            )
            start = end
        return out

    pad_index = meta.pad_index
    assert pad_index is not None
    q_pad = q.new_zeros(batch * max_len, num_heads, head_dim)
    q_pad.index_copy_(0, pad_index, q)
    q_pad = q_pad.view(batch, max_len, num_heads, head_dim).transpose(1, 2)
    keys, values = gather_kv(kv_layer, meta.block_tables)  # type: ignore[arg-type]
    out = F.scaled_dot_product_attention(q_pad, keys, values, attn_mask=meta.attn_mask, scale=scale, enable_gqa=group > 1)
    out = out.transpose(1, 2).reshape(batch * max_len, num_heads * head_dim)
    return out.index_select(0, pad_index)
