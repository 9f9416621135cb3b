"""The CUDA path for real: logits and greedy output match transformers on the GPU in fp32, bf16 runs,
and the whole pool/inputs live on the device. Skipped (with the reason) on machines without CUDA; the
same code paths run on CPU in test_correctness.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dssidecar.engine.config import EngineConfig
from dssidecar.engine.llm_engine import LLMEngine
from dssidecar.engine.protocol import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none"),
]
transformers = pytest.importorskip("transformers")

PROMPTS = ["def fibonacci(n):", "import os\nimport sys\n", "x", "The quick brown fox jumps over the lazy dog. " * 5]


def test_auto_device_is_cuda_and_the_pool_lives_there(qwen2_checkpoint_dir: Path) -> None:
    engine = LLMEngine.from_model_path(qwen2_checkpoint_dir, EngineConfig(device="auto", kv_cache_blocks=64))
    assert engine.runner.device.type == "cuda"
    assert engine.runner.kv_cache.is_cuda
    assert all(p.is_cuda for p in engine.runner.model.parameters())


def test_greedy_and_logits_match_hf_on_cuda_fp32(qwen2_checkpoint_dir: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    engine = LLMEngine.from_model_path(qwen2_checkpoint_dir, EngineConfig(device="cuda", kv_cache_blocks=256, block_size=8))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(qwen2_checkpoint_dir), dtype=torch.float32).cuda().eval()
    model.generation_config.eos_token_id = None
    assert engine.tokenizer is not None
    prompts = [engine.tokenizer.encode(text) for text in PROMPTS]
    lengths = [20, 9, 25, 14]
    ours = engine.generate(prompts, [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths])
    for prompt, n, got in zip(prompts, lengths, ours, strict=True):
        with torch.no_grad():
            reference = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=n, do_sample=False)
        assert got == reference[0, len(prompt) :].tolist()
    from dssidecar.engine.sequence import Sequence

    seq = Sequence("l", list(prompts[3]), SamplingParams(), 0.0, block_size=8)
    engine.block_manager.allocate(seq)  # the prompt ran above: leading blocks come from the prefix cache
    assert seq.num_cached_tokens > 0
    seq.num_scheduled_tokens = seq.num_tokens - seq.num_cached_tokens
    logits = engine.runner.compute_logits([seq], is_prefill=True)[0]
    with torch.no_grad():
        reference_logits = model(torch.tensor([prompts[3]], device="cuda")).logits[0, -1]
    assert torch.allclose(logits, reference_logits, atol=1e-3)


def test_bf16_runs_on_cuda(qwen2_checkpoint_dir: Path) -> None:
    engine = LLMEngine.from_model_path(
        qwen2_checkpoint_dir, EngineConfig(device="cuda", precision="bf16", kv_cache_blocks=128)
    )
    assert engine.runner.kv_cache.dtype == torch.bfloat16
    outputs = engine.generate([[5, 6, 7, 8]] * 3, SamplingParams(max_tokens=10, temperature=0.8, seed=1, ignore_eos=True))
    assert all(len(o) == 10 for o in outputs)
    assert outputs[0] == outputs[1] == outputs[2]  # same seed, same prompt
