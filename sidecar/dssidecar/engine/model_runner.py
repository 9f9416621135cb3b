"""Runs the model for one scheduled batch: builds the step's tensors, calls the model, samples.

It owns the KV pool tensor [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim] (zeroed so
padding never reads NaN) and turns the scheduler's block tables into slot mappings and masks with
tensor ops (one small host->device copy per input, no per-token Python loops). Sampled ids cross to
the CPU once per step.

A runner is self-contained (model + pool + device), so the knob controller can build a new one for
another precision/backend beside the old one and LLMEngine.swap_runner() switches between steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dssidecar.engine.sampling import sample_tokens
from dssidecar.engine.sequence import Sequence
from dssidecar.models.attention import AttentionMetadata
from dssidecar.models.config import ModelConfig


def kv_cache_bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    element_bytes = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * config.head_dim * element_bytes


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        model_config: ModelConfig,
        *,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        kv_dtype: torch.dtype | None = None,
        forward: Callable[..., torch.Tensor] | None = None,
        precision: str = "fp32",
        backend: str = "eager",
        kv_cache: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.model_config = model_config
        self.block_size = block_size
        self.device = torch.device(device)
        self.precision = precision
        self.backend = backend
        if kv_dtype is None:
            kv_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.kv_dtype = kv_dtype
        # `forward` lets a backend (torch.compile, TensorRT) replace the model's forward call
        self.forward: Callable[..., Any] = forward if forward is not None else model
        shape = (
            model_config.num_hidden_layers,
            2,
            num_blocks,
            block_size,
            model_config.num_key_value_heads,
            model_config.head_dim,
        )
        if kv_cache is not None and tuple(kv_cache.shape) == shape:
            self.kv_cache = kv_cache.to(device=self.device, dtype=kv_dtype)
        else:
            self.kv_cache = torch.zeros(shape, dtype=kv_dtype, device=self.device)
        self.num_blocks = num_blocks
        # decode attention runs in up to this many length buckets of at least this many rows
        self.max_decode_groups = 4
        self.min_decode_group_rows = 8

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cache.numel() * self.kv_cache.element_size()

    @property
    def kv_block_bytes(self) -> int:
        """Bytes of one block across every layer, keys and values."""
        return self.kv_cache_bytes // max(1, self.num_blocks)

    def resize_pool(self, num_blocks: int) -> None:
        """Grow (old blocks copied, new ones zeroed) or cut the pool tensor to `num_blocks` blocks.
        Cutting clones so the memory of the dropped blocks is really released."""
        old_blocks = self.num_blocks
        if num_blocks > old_blocks:
            shape = list(self.kv_cache.shape)
            shape[2] = num_blocks
            grown = torch.zeros(shape, dtype=self.kv_cache.dtype, device=self.kv_cache.device)
            grown[:, :, :old_blocks].copy_(self.kv_cache)
            self.kv_cache = grown
        elif num_blocks < old_blocks:
            self.kv_cache = self.kv_cache[:, :, :num_blocks].clone()
        self.num_blocks = num_blocks

    def _move(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cpu":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _to_device(self, values: list[int] | list[list[int]]) -> torch.Tensor:
        return self._move(torch.tensor(values, dtype=torch.int64))

    @staticmethod
    def _block_tables_host(seqs: list[Sequence]) -> torch.Tensor:
        width = max(len(seq.block_table) for seq in seqs)
        return torch.tensor([seq.block_table + [0] * (width - len(seq.block_table)) for seq in seqs], dtype=torch.int64)

    def _block_tables(self, seqs: list[Sequence]) -> torch.Tensor:
        return self._move(self._block_tables_host(seqs))

    def _additive_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """Bool "may attend" -> 0 / -inf in the KV dtype, built once per step (SDPA converts a bool mask
        on every call, i.e. once per layer)."""
        mask = torch.zeros(allowed.shape, dtype=self.kv_dtype, device=self.device)
        return mask.masked_fill_(~allowed, float("-inf"))

    def prepare_prefill(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        """Packed inputs for the scheduled prompt chunks; returns (ids, positions, meta, last_index)."""
        input_ids: list[int] = []
        positions: list[int] = []
        pad_index: list[int] = []
        starts: list[int] = []
        query_lens: list[int] = []
        for seq in seqs:
            start = seq.num_cached_tokens
            end = start + seq.num_scheduled_tokens
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            starts.append(start)
            query_lens.append(end - start)
        batch = len(seqs)
        max_query_len = max(query_lens)
        # slot of each new token, computed on the host (sizes are data-dependent) and copied once
        block_tables_host = self._block_tables_host(seqs)
        positions_host = torch.tensor(positions, dtype=torch.int64)
        seq_of_token = torch.repeat_interleave(torch.arange(batch), torch.tensor(query_lens))
        slot_mapping = self._move(
            block_tables_host[seq_of_token, positions_host // self.block_size] * self.block_size
            + positions_host % self.block_size
        )
        positions_t = self._move(positions_host)
        block_tables = self._move(block_tables_host)
        reads_pool = any(start > 0 for start in starts)
        attn_mask = None
        if reads_pool:
            for row, query_len in enumerate(query_lens):
                pad_index.extend(range(row * max_query_len, row * max_query_len + query_len))
            key_positions = torch.arange(block_tables.shape[1] * self.block_size, device=self.device)
            query_positions = self._to_device(starts).unsqueeze(1) + torch.arange(max_query_len, device=self.device)
            attn_mask = self._additive_mask((key_positions.view(1, 1, -1) <= query_positions.unsqueeze(2)).unsqueeze(1))
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=slot_mapping,
            num_seqs=batch,
            max_query_len=max_query_len,
            pad_index=self._to_device(pad_index) if reads_pool else None,
            query_lens=query_lens,
            block_tables=block_tables if reads_pool else None,
            attn_mask=attn_mask,
        )
        last_index = torch.cumsum(self._to_device(query_lens), 0) - 1
        return self._to_device(input_ids), positions_t, meta, last_index

    def prepare_decode(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Inputs for one token per sequence (the one after its cached tokens: the last sampled token, or
        a one-token prompt chunk). `seqs` should be sorted by length (compute_logits does it) so rows can
        be grouped into a few length buckets, each padded only to its own max."""
        batch = len(seqs)
        input_ids = self._to_device([seq.token_ids[seq.num_cached_tokens] for seq in seqs])
        context_lens_list = [seq.num_cached_tokens + 1 for seq in seqs]
        context_lens = self._to_device(context_lens_list)
        positions = context_lens - 1
        block_tables = self._block_tables(seqs)
        rows = torch.arange(batch, device=self.device)
        slot_mapping = block_tables[rows, positions // self.block_size] * self.block_size + positions % self.block_size
        num_groups = max(1, min(self.max_decode_groups, batch // self.min_decode_group_rows))
        groups: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []
        bounds = [round(i * batch / num_groups) for i in range(num_groups + 1)]
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            width = -(-max(context_lens_list[start:end]) // self.block_size)
            key_positions = torch.arange(width * self.block_size, device=self.device)
            allowed = (key_positions.unsqueeze(0) < context_lens[start:end].unsqueeze(1)).view(end - start, 1, 1, -1)
            groups.append((start, end, block_tables[start:end, :width], self._additive_mask(allowed)))
        meta = AttentionMetadata(
            is_prefill=False,
            slot_mapping=slot_mapping,
            num_seqs=batch,
            block_tables=block_tables,
            decode_groups=groups,
        )
        return input_ids, positions, meta

    @staticmethod
    def is_decode_row(seq: Sequence) -> bool:
        """One new token after cached ones: runs the decode attention shape."""
        return seq.num_scheduled_tokens == 1 and seq.num_cached_tokens > 0

    def _forward_hidden(self, seqs: list[Sequence]) -> torch.Tensor:
        """Hidden state after the last scheduled token of each sequence, in `seqs` order; writes K/V.

        Prompt chunks and decode tokens may be mixed: the chunks are packed first, then the decode
        tokens sorted by context length (for the length buckets); one forward pass runs them all."""
        prefill_rows = [i for i, seq in enumerate(seqs) if not self.is_decode_row(seq)]
        decode_rows = sorted(
            (i for i, seq in enumerate(seqs) if self.is_decode_row(seq)), key=lambda i: seqs[i].num_cached_tokens
        )
        if not decode_rows:
            input_ids, positions, meta, last_index = self.prepare_prefill(seqs)
            hidden = self.forward(input_ids, positions, self.kv_cache, meta)
            return hidden.index_select(0, last_index)  # type: ignore[no-any-return]
        decode_seqs = [seqs[i] for i in decode_rows]
        if not prefill_rows:
            input_ids, positions, meta = self.prepare_decode(decode_seqs)
            hidden = self.forward(input_ids, positions, self.kv_cache, meta)
            if decode_rows != sorted(decode_rows):
                inverse = [0] * len(decode_rows)
                for sorted_row, original_row in enumerate(decode_rows):
                    inverse[original_row] = sorted_row
                hidden = hidden.index_select(0, self._to_device(inverse))
            return hidden  # type: ignore[no-any-return]
        prefill_seqs = [seqs[i] for i in prefill_rows]
        p_ids, p_positions, p_meta, _last_index = self.prepare_prefill(prefill_seqs)
        d_ids, d_positions, d_meta = self.prepare_decode(decode_seqs)
        num_prefill_tokens = int(p_ids.shape[0])
        p_meta.slot_mapping = torch.cat([p_meta.slot_mapping, d_meta.slot_mapping])
        p_meta.decode_groups = d_meta.decode_groups
        p_meta.num_prefill_tokens = num_prefill_tokens
        hidden = self.forward(torch.cat([p_ids, d_ids]), torch.cat([p_positions, d_positions]), self.kv_cache, p_meta)
        # the hidden row of each sequence, in `seqs` order, from host-side lengths (no device sync)
        rows = [0] * len(seqs)
        for row, last in zip(prefill_rows, itertools.accumulate(p_meta.query_lens or []), strict=True):
            rows[row] = last - 1
        for sorted_row, row in enumerate(decode_rows):
            rows[row] = num_prefill_tokens + sorted_row
        return hidden.index_select(0, self._to_device(rows))  # type: ignore[no-any-return]

    @torch.inference_mode()
    def compute_logits(self, seqs: list[Sequence], is_prefill: bool | None = None) -> torch.Tensor:
        """Next-token logits [len(seqs), vocab] (float32) after this step's tokens; writes their K/V.
        `is_prefill` is ignored (kept for callers of the prefill-or-decode era): each sequence's
        `num_cached_tokens` / `num_scheduled_tokens` say what it computes."""
        hidden = self._forward_hidden(seqs)
        logits: torch.Tensor = self.model.compute_logits(hidden)  # type: ignore[operator]
        return logits.float()

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool | None = None) -> list[int]:
        """One step: compute and sample; returns one token id per sequence, -1 for a prompt chunk that
        does not end its prompt (no logits are computed for it, and its seeded generator is not drawn)."""
        hidden = self._forward_hidden(seqs)
        sampled = [i for i, seq in enumerate(seqs) if seq.num_cached_tokens + seq.num_scheduled_tokens >= seq.num_tokens]
        if not sampled:
            return [-1] * len(seqs)
        if len(sampled) < len(seqs):
            hidden = hidden.index_select(0, self._to_device(sampled))
        logits = self.model.compute_logits(hidden).float()  # type: ignore[operator]
        chosen = sample_tokens(logits, [seqs[i].params for i in sampled], [seqs[i].generator for i in sampled])
        token_ids = [-1] * len(seqs)
        for row, token_id in zip(sampled, chosen, strict=True):
            token_ids[row] = token_id
        return token_ids
