"""Sampling: greedy is argmax, top-k/top-p masks keep exactly the right tokens, seeds are reproducible
whatever the batch, temperature sharpens."""

from __future__ import annotations

import torch
from dssidecar.engine.protocol import SamplingParams
from dssidecar.engine.sampling import apply_top_k_top_p, make_generator, sample_tokens
from hypothesis import given, settings
from hypothesis import strategies as st


def test_greedy_is_argmax_per_row() -> None:
    logits = torch.randn(5, 50)
    assert sample_tokens(logits, SamplingParams(temperature=0.0)) == logits.argmax(-1).tolist()
    assert sample_tokens(logits, SamplingParams(temperature=0.7, top_k=1)) == logits.argmax(-1).tolist()


def test_greedy_rows_stay_argmax_in_a_mixed_batch() -> None:
    logits = torch.randn(4, 30)
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.0, seed=3)]
    gens = [None, None, None, make_generator(3, torch.device("cpu"))]
    tokens = sample_tokens(logits, params, gens)
    assert tokens[0] == int(logits[0].argmax()) and tokens[2] == int(logits[2].argmax())


def test_top_k_keeps_only_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    masked = apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([1.0]))
    assert torch.isfinite(masked).tolist() == [[False, True, False, True, False]]
    assert masked[0, 1] == 5.0 and masked[0, 3] == 4.0


def test_top_p_keeps_the_smallest_nucleus_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    masked = apply_top_k_top_p(probs.log(), torch.tensor([0]), torch.tensor([0.7]))
    assert torch.isfinite(masked).tolist() == [[True, True, False, False]]
    masked = apply_top_k_top_p(probs.log(), torch.tensor([0]), torch.tensor([0.1]))
    assert torch.isfinite(masked).tolist() == [[True, False, False, False]]  # the top token always stays


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 20), st.floats(0.05, 1.0), st.integers(0, 10_000))
def test_sampled_tokens_always_lie_inside_the_top_k_and_top_p_set(top_k: int, top_p: float, seed: int) -> None:
    torch.manual_seed(seed)
    logits = torch.randn(3, 40) * 3
    masked = apply_top_k_top_p(logits, torch.full((3,), top_k), torch.full((3,), top_p))
    allowed = torch.isfinite(masked)
    assert bool((allowed.sum(-1) >= 1).all()) and bool((allowed.sum(-1) <= top_k).all())
    params = SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, seed=seed)
    tokens = sample_tokens(logits, [params] * 3, [make_generator(seed, torch.device("cpu")) for _ in range(3)])
    for row, token in enumerate(tokens):
        assert bool(allowed[row, token])


def test_a_seed_gives_the_same_tokens_whatever_else_is_in_the_batch() -> None:
    torch.manual_seed(0)
    target = torch.randn(1, 100)
    params = SamplingParams(temperature=1.0, seed=1234)

    def draw(batch_logits: torch.Tensor, others: int) -> list[int]:
        gen = make_generator(1234, torch.device("cpu"))
        out = []
        for _ in range(10):
            tokens = sample_tokens(
                batch_logits, [params] + [SamplingParams(temperature=1.0)] * others, [gen] + [None] * others
            )
            out.append(tokens[0])
        return out

    alone = draw(target, 0)
    batched = draw(torch.cat([target, torch.randn(3, 100)]), 3)
    assert alone == batched
    assert len(set(alone)) > 1  # it really samples


def test_low_temperature_concentrates_on_the_top_token() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(200, 1)
    hot = sample_tokens(logits, SamplingParams(temperature=5.0))
    cold = sample_tokens(logits, SamplingParams(temperature=0.05))
    assert cold.count(0) == 200
    assert hot.count(0) < 200


def test_a_top_k_beyond_the_vocabulary_keeps_every_token_instead_of_overflowing() -> None:
    logits = torch.randn(2, 10)
    params = [SamplingParams(temperature=1.0, top_k=2**70, seed=1), SamplingParams(temperature=1.0, top_k=10, seed=1)]
    gens = [make_generator(1, torch.device("cpu")), make_generator(1, torch.device("cpu"))]
    first, second = sample_tokens(logits, params, gens)
    assert 0 <= first < 10 and 0 <= second < 10
