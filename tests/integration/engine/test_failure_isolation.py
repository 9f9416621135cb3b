"""One bad request never fails its batch neighbours (issue 12 item 6): out-of-range sampling values are
refused at admission, and a sequence whose step raises is failed alone while the others in the same
step finish with exactly the tokens they get without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dssidecar.engine.config import EngineConfig
from dssidecar.engine.llm_engine import LLMEngine
from dssidecar.engine.protocol import InvalidRequestError, RequestOutput, SamplingParams
from dssidecar.engine.sequence import Sequence

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture()
def engine(tiny_model_dir: Path) -> LLMEngine:
    return LLMEngine.from_model_path(tiny_model_dir, EngineConfig(device="cpu", kv_cache_blocks=128, block_size=8))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=2**70),
        SamplingParams(temperature=1.0, seed=2**70),
        SamplingParams(temperature=1.0, seed=-(2**63) - 1),
        SamplingParams(temperature=float("nan")),
        SamplingParams(temperature=1.0, top_k=-5),
    ],
    ids=["top_k-2**70", "seed-2**70", "seed-below-int64", "temperature-nan", "top_k-negative"],
)
def test_out_of_range_sampling_values_are_refused_at_admission(engine: LLMEngine, params: SamplingParams) -> None:
    with pytest.raises(InvalidRequestError):
        engine.add_request("bad", [5, 6, 7], params)
    assert not engine.has_unfinished_requests()


def run_all(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[RequestOutput]]:
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, prompt, params)
    outputs: dict[str, list[RequestOutput]] = {request_id: [] for request_id in requests}
    while engine.has_unfinished_requests():
        for output in engine.step():
            outputs[output.request_id].append(output)
    return outputs


def poison_runner(engine: LLMEngine, poisoned_id: str, from_step: int) -> list[int]:
    """Make every model step that contains `poisoned_id` raise, from the `from_step`-th step on (as a
    sampling overflow or a NaN in one row would). Returns the sizes of the batches the runner saw."""
    real_run = engine.runner.run
    batch_sizes: list[int] = []

    def run(seqs: list[Sequence], *args: Any, **kwargs: Any) -> list[int]:
        batch_sizes.append(len(seqs))
        if len(batch_sizes) >= from_step and any(seq.request_id == poisoned_id for seq in seqs):
            raise OverflowError("Python int too large to convert to C long")
        return real_run(seqs, *args, **kwargs)

    engine.runner.run = run  # type: ignore[method-assign]
    return batch_sizes


@pytest.mark.parametrize("from_step", [1, 3], ids=["in-prefill", "in-decode"])
def test_a_failing_sequence_fails_alone_and_its_neighbours_are_unchanged(
    tiny_model_dir: Path, from_step: int
) -> None:
    prompts = {f"r{i}": ([5 + i, 9, 11 + i, 4, 8, 2 + i], GREEDY) for i in range(5)}
    clean = run_all(
        LLMEngine.from_model_path(tiny_model_dir, EngineConfig(device="cpu", kv_cache_blocks=128, block_size=8)),
        prompts,
    )
    engine = LLMEngine.from_model_path(tiny_model_dir, EngineConfig(device="cpu", kv_cache_blocks=128, block_size=8))
    batch_sizes = poison_runner(engine, "r2", from_step)
    outputs = run_all(engine, prompts)

    final = outputs["r2"][-1]
    assert final.finished and final.finish_reason == "abort"
    assert final.error is not None and "OverflowError" in final.error
    for request_id in ("r0", "r1", "r3", "r4"):
        got = [t for o in outputs[request_id] for t in o.token_ids]
        want = [t for o in clean[request_id] for t in o.token_ids]
        assert got == want and len(got) == 8, request_id
        assert outputs[request_id][-1].finish_reason == "length"
    assert max(batch_sizes) == 5  # they really were batched together
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_an_error_in_postprocess_fails_only_that_request(engine: LLMEngine) -> None:
    class BrokenDetokenizer:
        def add(self, token_ids: list[int], final: bool = False) -> str:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    engine.add_request("ok", [5, 6, 7], GREEDY)
    engine.add_request("broken", [5, 6, 8], GREEDY)
    engine._requests["broken"].detokenizer = BrokenDetokenizer()
    finals = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finals[output.request_id] = output
    assert finals["ok"].finish_reason == "length" and finals["ok"].completion_tokens == 8
    assert finals["broken"].finish_reason == "abort" and "UnicodeDecodeError" in str(finals["broken"].error)
