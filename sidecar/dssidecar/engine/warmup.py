"""Warm a freshly built runner up before it serves: compile what torch.compile/TensorRT need, touch the
kernels, on a private scratch pool so the live KV cache is never written.

Why this exists: a precision/backend knob change builds the new runner beside the running one and
switches between steps; the first real step after the switch must not pay for compilation.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from dssidecar.engine.model_runner import ModelRunner
from dssidecar.engine.protocol import SamplingParams
from dssidecar.engine.sequence import Sequence


def warm_up_runner(runner: Any, model_config: Any, block_size: int) -> float:
    """Run prefill (1 and 2 sequences, with and without context), decode (1, 2, 3) and a mixed step on a
    scratch pool.

    Compiles what torch.compile/TensorRT need and touches the kernels, without writing to the live pool.
    Returns the seconds it took.
    """
    started = time.perf_counter()
    scratch = ModelRunner(
        runner.model, model_config, num_blocks=16, block_size=block_size, device=runner.device,
        kv_dtype=runner.kv_dtype, forward=runner.forward, precision=runner.precision, backend=runner.backend,
    )
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    vocab = int(model_config.vocab_size)

    def make(length: int, first_block: int) -> Sequence:
        token_ids = [(7 * i + 3) % vocab for i in range(length)]
        seq = Sequence(request_id=f"warmup-{first_block}", token_ids=token_ids, params=params,
                       arrival_time=time.monotonic(), block_size=block_size)
        seq.block_table = list(range(first_block, first_block + 4))
        return seq

    seqs = [make(block_size + 3, 0), make(5, 4), make(9, 8)]
    for batch in ([seqs[0]], seqs[1:]):
        for seq in batch:
            seq.num_cached_tokens, seq.num_scheduled_tokens = 0, seq.num_tokens
        scratch.run(batch)
    # prefill with context (a chunk after cached tokens)
    seqs[0].num_cached_tokens, seqs[0].num_scheduled_tokens = block_size, 3
    scratch.run([seqs[0]])
    for batch_size in (1, 2, 3):
        batch = seqs[:batch_size]
        for seq in batch:
            seq.token_ids.append(1)
            seq.num_cached_tokens, seq.num_scheduled_tokens = seq.num_tokens - 1, 1
        scratch.run(batch)
    # a mixed step: one prompt chunk and two decode tokens in one forward pass
    seqs[2].num_cached_tokens, seqs[2].num_scheduled_tokens = 0, seqs[2].num_tokens
    for seq in seqs[:2]:
        seq.token_ids.append(1)
        seq.num_cached_tokens, seq.num_scheduled_tokens = seq.num_tokens - 1, 1
    scratch.run(seqs)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return time.perf_counter() - started
