"""Pick the next token of every sequence in a step from its logits, in one batched pass.

All-greedy batches (the common case for benchmarks and tests) are one argmax. Otherwise temperature,
top-k and top-p are applied as tensor masks for the whole batch; rows with a per-request seed draw
with their own torch.Generator (so a seeded request gives the same tokens whatever it is batched
with), the rest draw together. The result crosses to the CPU once per step.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceType

import torch

from dssidecar.engine.protocol import SamplingParams


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) every logit outside each row's top-k and top-p nucleus. top_k <= 0: no limit."""
    vocab = logits.shape[-1]
    sorted_logits, sorted_index = logits.sort(dim=-1, descending=True)
    keep = torch.ones_like(sorted_logits, dtype=torch.bool)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    keep &= ranks < k.unsqueeze(1)
    probs = sorted_logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)
    cumulative_before = probs.cumsum(dim=-1) - probs
    keep &= cumulative_before < top_p.unsqueeze(1)  # the top token is always kept
    masked_sorted = sorted_logits.masked_fill(~keep, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, sorted_index, masked_sorted)


def sample_tokens(
    logits: torch.Tensor,
    params: SamplingParams | SequenceType[SamplingParams],
    generators: SequenceType[torch.Generator | None] | None = None,
) -> list[int]:
    """logits [B, vocab] -> one token id per row."""
    batch = logits.shape[0]
    params_list = [params] * batch if isinstance(params, SamplingParams) else list(params)
    if all(p.greedy for p in params_list):
        return logits.argmax(dim=-1).tolist()  # type: ignore[no-any-return]
    logits = logits.float()
    device = logits.device
    temperature = torch.tensor([p.temperature if not p.greedy else 1.0 for p in params_list], device=device)
    vocab = logits.shape[-1]
    top_k = torch.tensor([min(p.top_k, vocab) for p in params_list], device=device)
    top_p = torch.tensor([p.top_p for p in params_list], device=device, dtype=torch.float32)
    scaled = logits / temperature.unsqueeze(1)
    if bool((top_k > 0).any()) or bool((top_p < 1.0).any()):
        scaled = apply_top_k_top_p(scaled, top_k, top_p)
    probs = scaled.softmax(dim=-1)
    chosen = logits.argmax(dim=-1)
    gens = list(generators) if generators is not None else [None] * batch
    unseeded_rows = [i for i in range(batch) if not params_list[i].greedy and gens[i] is None]
    if unseeded_rows:
        rows = torch.tensor(unseeded_rows, device=device)
        chosen[rows] = torch.multinomial(probs[rows], 1).squeeze(1)
    for i in range(batch):
        generator = gens[i]
        if generator is not None and not params_list[i].greedy:
            chosen[i] = torch.multinomial(probs[i], 1, generator=generator)[0]
    return chosen.tolist()  # type: ignore[no-any-return]
