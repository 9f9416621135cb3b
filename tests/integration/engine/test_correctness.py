"""The engine computes what transformers computes: fp32 next-token logits within 1e-4 of HF's, and
greedy output equal to HF `generate` greedy, alone and batched (mixed lengths, chunked prefill,
preemption, prefix-cache hits), for a Qwen2 (tied embeddings, qkv bias) and a Llama checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dssidecar.engine.config import EngineConfig
from dssidecar.engine.llm_engine import LLMEngine
from dssidecar.engine.protocol import SamplingParams
from dssidecar.engine.sequence import Sequence

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\nclass Config:\n    def __init__(self):",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 6,
]
TOLERANCE = 1e-4


def hf_model(path: Path) -> torch.nn.Module:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    return model


def hf_greedy(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt) :].tolist()  # type: ignore[no-any-return]


def make_engine(path: Path, **overrides: object) -> LLMEngine:
    settings: dict[str, object] = {"device": "cpu", "kv_cache_blocks": 256, "block_size": 8}
    settings.update(overrides)
    return LLMEngine.from_model_path(path, EngineConfig(**settings))  # type: ignore[arg-type]


def test_prefill_and_decode_logits_match_hf(checkpoint_dir: Path) -> None:
    engine = make_engine(checkpoint_dir)
    model = hf_model(checkpoint_dir)
    tokenizer = engine.tokenizer
    assert tokenizer is not None
    runner, manager = engine.runner, engine.block_manager
    for text in PROMPTS:
        prompt = tokenizer.encode(text)
        seq = Sequence("t", list(prompt), SamplingParams(), 0.0, block_size=8)
        manager.allocate(seq)
        seq.num_scheduled_tokens = len(prompt)
        ours = runner.compute_logits([seq], is_prefill=True)[0]
        seq.num_cached_tokens = len(prompt)
        with torch.no_grad():
            reference = model(torch.tensor([prompt])).logits[0, -1]
        assert torch.allclose(ours, reference, atol=TOLERANCE), (ours - reference).abs().max()
        # decode 12 steps teacher-forced on HF's greedy tokens, comparing every step's logits
        for _ in range(12):
            seq.token_ids.append(int(reference.argmax()))
            manager.append_slot(seq)
            seq.num_scheduled_tokens = 1
            ours = runner.compute_logits([seq], is_prefill=False)[0]
            seq.num_cached_tokens += 1
            with torch.no_grad():
                reference = model(torch.tensor([seq.token_ids])).logits[0, -1]
            assert torch.allclose(ours, reference, atol=TOLERANCE), (ours - reference).abs().max()
        manager.deallocate(seq)


def test_batched_prefill_logits_match_hf_for_each_sequence(qwen2_checkpoint_dir: Path) -> None:
    engine = make_engine(qwen2_checkpoint_dir)
    model = hf_model(qwen2_checkpoint_dir)
    assert engine.tokenizer is not None
    prompts = [engine.tokenizer.encode(text) for text in PROMPTS]
    seqs = [Sequence(f"s{i}", list(p), SamplingParams(), 0.0, block_size=8) for i, p in enumerate(prompts)]
    for seq in seqs:
        engine.block_manager.allocate(seq)
        seq.num_scheduled_tokens = seq.num_tokens
    ours = engine.runner.compute_logits(seqs, is_prefill=True)
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            reference = model(torch.tensor([prompt])).logits[0, -1]
        assert torch.allclose(ours[row], reference, atol=TOLERANCE)


def test_greedy_output_equals_hf_generate_alone(checkpoint_dir: Path) -> None:
    engine = make_engine(checkpoint_dir)
    model = hf_model(checkpoint_dir)
    assert engine.tokenizer is not None
    for text in PROMPTS:
        prompt = engine.tokenizer.encode(text)
        [ours] = engine.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
        assert ours == hf_greedy(model, prompt, 24)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # everything in one prefill step, then batched decode
        {"max_num_batched_tokens": 16, "max_batch_size": 2},  # chunked prompts, small batches
        {"kv_cache_blocks": 26, "enable_prefix_caching": False},  # tiny pool: preemption + recompute
        {"decode_group_rows": 1},  # decode attention split into length buckets (rows re-sorted)
    ],
    ids=["plain", "chunked", "preempting", "bucketed"],
)
def test_greedy_output_equals_hf_generate_batched(qwen2_checkpoint_dir: Path, overrides: dict[str, object]) -> None:
    overrides = dict(overrides)
    group_rows = overrides.pop("decode_group_rows", None)
    engine = make_engine(qwen2_checkpoint_dir, **overrides)
    if group_rows is not None:
        engine.runner.min_decode_group_rows = int(group_rows)  # type: ignore[call-overload]
    model = hf_model(qwen2_checkpoint_dir)
    assert engine.tokenizer is not None
    prompts = [engine.tokenizer.encode(text) for text in PROMPTS]
    lengths = [20, 7, 31, 12]
    ours = engine.generate(
        prompts, [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    )
    for prompt, n, got in zip(prompts, lengths, ours, strict=True):
        assert got == hf_greedy(model, prompt, n)
    if "kv_cache_blocks" in overrides:
        assert engine.scheduler.num_preemptions_total > 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_prefix_cache_hits_do_not_change_the_output(qwen2_checkpoint_dir: Path) -> None:
    engine = make_engine(qwen2_checkpoint_dir)
    assert engine.tokenizer is not None
    shared = engine.tokenizer.encode("You are a helpful assistant. " * 4)
    prompts = [shared + engine.tokenizer.encode(tail) for tail in ("Say hi.", "Count to three.")]
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    cold = [engine.generate([p], params)[0] for p in prompts]
    hits_before = engine.block_manager.prefix_cache_hit_tokens_total
    warm = engine.generate(prompts, params)
    assert engine.block_manager.prefix_cache_hit_tokens_total - hits_before >= 2 * 8 * (len(shared) // 8 - 1)
    assert warm == cold
    model = hf_model(qwen2_checkpoint_dir)
    assert warm[1] == hf_greedy(model, prompts[1], 10)


def run_staggered(engine: LLMEngine, prompts: list[list[int]], lengths: list[int], arrive_at: list[int]) -> tuple[list[list[int]], int]:
    """Add prompt i before step arrive_at[i] (so new prompts land while others decode); run to the end.
    Returns each request's tokens and the number of steps that mixed prompt chunks with decode tokens."""
    real_run = engine.runner.run
    mixed_steps = 0

    def counting_run(seqs: list[Sequence], *args: object) -> list[int]:
        nonlocal mixed_steps
        decode_rows = sum(1 for seq in seqs if engine.runner.is_decode_row(seq))
        mixed_steps += 0 < decode_rows < len(seqs)
        return real_run(seqs)

    engine.runner.run = counting_run  # type: ignore[method-assign]
    results: dict[str, list[int]] = {}
    step = 0
    while step == 0 or engine.has_unfinished_requests() or len(results) < len(prompts):
        for i, at in enumerate(arrive_at):
            if at == step:
                engine.add_request(f"m{i}", prompts[i], SamplingParams(max_tokens=lengths[i], temperature=0.0, ignore_eos=True))
                results[f"m{i}"] = []
        for output in engine.step():
            results[output.request_id].extend(output.token_ids)
        step += 1
    return [results[f"m{i}"] for i in range(len(prompts))], mixed_steps


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"max_num_batched_tokens": 16},  # prompts chunked beside the running decodes
        {"kv_cache_blocks": 26, "enable_prefix_caching": False, "max_num_batched_tokens": 24},  # preemption
    ],
    ids=["mixed", "mixed-chunked", "mixed-preempting"],
)
def test_greedy_output_equals_hf_generate_in_mixed_prefill_decode_steps(
    qwen2_checkpoint_dir: Path, overrides: dict[str, object]
) -> None:
    engine = make_engine(qwen2_checkpoint_dir, **overrides)
    model = hf_model(qwen2_checkpoint_dir)
    assert engine.tokenizer is not None
    prompts = [engine.tokenizer.encode(text) for text in PROMPTS]
    lengths = [20, 9, 31, 12]
    ours, mixed_steps = run_staggered(engine, prompts, lengths, arrive_at=[0, 2, 5, 9])
    assert mixed_steps > 0  # prompt chunks really ran in the same forward pass as decode tokens
    for prompt, n, got in zip(prompts, lengths, ours, strict=True):
        assert got == hf_greedy(model, prompt, n)
    if "kv_cache_blocks" in overrides:
        assert engine.scheduler.num_preemptions_total > 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_prefix_hits_in_mixed_steps_equal_hf_generate(qwen2_checkpoint_dir: Path) -> None:
    engine = make_engine(qwen2_checkpoint_dir, max_num_batched_tokens=20)
    model = hf_model(qwen2_checkpoint_dir)
    assert engine.tokenizer is not None
    shared = engine.tokenizer.encode("You are a helpful assistant. " * 4)
    prompts = [shared + engine.tokenizer.encode(tail) for tail in ("Say hi.", "Count to three.", "Name a colour.")]
    hits_before = engine.block_manager.prefix_cache_hit_tokens_total
    ours, mixed_steps = run_staggered(engine, prompts, [16, 10, 10], arrive_at=[0, 6, 9])
    assert mixed_steps > 0
    assert engine.block_manager.prefix_cache_hit_tokens_total - hits_before >= 2 * 8 * (len(shared) // 8 - 1)
    for prompt, got in zip(prompts, ours, strict=True):
        assert got == hf_greedy(model, prompt, len(got)) and got
