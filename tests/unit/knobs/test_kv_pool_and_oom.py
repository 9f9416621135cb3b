"""KV pool resize and the OOM guard on the real LLMEngine (tiny random model, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dssidecar.engine.config import EngineConfig
from dssidecar.engine.llm_engine import LLMEngine
from dssidecar.engine.oom_guard import FaultInjector, KVPoolAllocationError, is_out_of_memory
from dssidecar.engine.protocol import SamplingParams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PARAMS = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
PROMPTS = [[5 + i] * (6 + 5 * i) for i in range(6)]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LLMEngine:
    return LLMEngine.from_model_path(tiny_model_dir, EngineConfig(kv_cache_blocks=64, device="cpu", max_model_len=256))


@pytest.fixture(scope="module")
def reference(engine: LLMEngine) -> list[list[int]]:
    return engine.generate(PROMPTS, PARAMS)


class PoolResizer:
    """The engine's KV pool API seen as the knob uses it: resize, the target, blocks pending release."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine

    def resize(self, num_blocks: int) -> int:
        return self.engine.resize_kv_pool(num_blocks)

    @property
    def target_blocks(self) -> int | None:
        """The size a pending shrink works towards; None when no shrink is pending."""
        engine = self.engine
        return engine.kv_cache_blocks if engine.kv_cache_blocks != engine.runner.num_blocks else None

    @property
    def pending_release(self) -> int:
        return self.engine.kv_cache_blocks_pending_release


@pytest.fixture()
def resizer(engine: LLMEngine) -> PoolResizer:
    resizer = PoolResizer(engine)
    yield resizer
    resizer.resize(64)
    while resizer.target_blocks is not None:
        engine.step()
    engine.set_limits(max_batch_size=engine.config.max_batch_size)
    engine.oom_guard.injector = None


def check_pool(engine: LLMEngine, resizer: PoolResizer) -> None:
    """Block accounting holds, also while a shrink waits: retired blocks are neither free nor used."""
    seqs = [s for s in list(engine.scheduler.running) + list(engine.scheduler.waiting) if s.block_table]
    manager = engine.block_manager
    target = resizer.target_blocks
    if target is None:
        manager.check_invariants(seqs)
        return
    free = set(manager.free_block_ids)
    assert not free & manager.used_block_ids
    assert all(block_id < target for block_id in free), "a retired block is still free"
    assert all(block_id < len(manager.blocks) for block_id in free | manager.used_block_ids)
    owners: dict[int, int] = {}
    for seq in seqs:
        for block_id in seq.block_table:
            owners[block_id] = owners.get(block_id, 0) + 1
    assert owners == {b.block_id: b.ref_count for b in manager.blocks if b.ref_count}


def run_all(engine: LLMEngine, steps_before: int = 0, action=None) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    engine.abort_all()
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, PARAMS)
    outputs: dict[str, list[int]] = {}
    step = 0
    while engine.has_unfinished_requests():
        if step == steps_before and action is not None:
            action()
        for output in engine.step():
            outputs.setdefault(output.request_id, []).extend(output.token_ids)
        step += 1
    return outputs


def test_grow_adds_free_blocks_and_keeps_outputs(engine: LLMEngine, reference: list[list[int]], resizer: PoolResizer) -> None:
    outputs = run_all(engine, 3, lambda: resizer.resize(100))
    assert engine.runner.num_blocks == 100 and engine.runner.kv_cache.shape[2] == 100
    assert engine.block_manager.num_blocks == 100 and engine.block_manager.num_free_blocks == 100
    assert [outputs[f"r{i}"] for i in range(len(PROMPTS))] == reference


def test_shrink_below_held_blocks_is_pending_then_completes(
    engine: LLMEngine, reference: list[list[int]], resizer: PoolResizer
) -> None:
    pending: list[int] = []

    def shrink() -> None:
        # make sure some held block sits above the new size
        held = engine.block_manager.used_block_ids
        target = max(1, min(held)) if held else 8
        pending.append(resizer.resize(target))

    outputs = run_all(engine, 2, shrink)
    assert pending and pending[0] > 0  # some blocks were still held
    assert [outputs[f"r{i}"] for i in range(len(PROMPTS))] == reference
    engine.step()  # the hook finishes the shrink once nothing is held above the target
    assert resizer.target_blocks is None and resizer.pending_release == 0
    assert engine.runner.kv_cache.shape[2] == engine.runner.num_blocks == engine.block_manager.num_blocks
    engine.block_manager.check_invariants([])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=17, max_value=120), min_size=1, max_size=4), at_step=st.integers(0, 12))
def test_any_resize_sequence_keeps_outputs_and_invariants(
    engine: LLMEngine, reference: list[list[int]], resizer: PoolResizer, sizes: list[int], at_step: int
) -> None:
    def resize_all() -> None:
        for size in sizes:
            resizer.resize(size)
            check_pool(engine, resizer)

    outputs = run_all(engine, at_step, resize_all)
    assert [outputs[f"r{i}"] for i in range(len(PROMPTS))] == reference
    engine.step()
    assert resizer.pending_release == 0
    engine.block_manager.check_invariants([])


def test_memory_figures_are_ratios_and_bytes(engine: LLMEngine) -> None:
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"m{i}", prompt, PARAMS)
    engine.step()
    figures = engine.memory_figures()
    assert figures["memory_reserved_bytes"] > 0
    assert 0 < figures["memory_allocated_bytes"] <= figures["memory_reserved_bytes"]
    assert 0.0 < figures["memory_fragmentation_ratio"] < 1.0  # prompts do not fill their last block
    assert figures["kv_cache_pool_bytes"] == engine.runner.kv_cache_bytes
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.memory_figures()["memory_fragmentation_ratio"] == 0.0


@pytest.mark.parametrize("above_batch", [1, 3])
def test_injected_oom_retries_smaller_and_keeps_outputs(
    engine: LLMEngine, reference: list[list[int]], resizer: PoolResizer, above_batch: int
) -> None:
    before = engine.oom_guard.oom_events_total
    engine.oom_guard.injector = FaultInjector(above_batch=above_batch, count=4)
    outputs = run_all(engine)
    assert [outputs[f"r{i}"] for i in range(len(PROMPTS))] == reference
    assert engine.oom_guard.oom_events_total > before
    assert engine.scheduler.max_batch_size <= above_batch


def test_oom_with_one_sequence_is_raised_not_looped(engine: LLMEngine, resizer: PoolResizer) -> None:
    engine.oom_guard.injector = FaultInjector(above_batch=0, count=1)
    engine.add_request("lonely", PROMPTS[0], PARAMS)
    with pytest.raises(KVPoolAllocationError):
        engine.step()
    engine.fail_current_batch("out of memory")
    assert not engine.has_unfinished_requests()


def test_fault_injector_from_env() -> None:
    assert FaultInjector.from_env({}) is None
    injector = FaultInjector.from_env({"DSSIDECAR_INJECT_OOM_ABOVE_BATCH": "4", "DSSIDECAR_INJECT_OOM_COUNT": "2"})
    assert injector is not None and injector.above_batch == 4 and injector.remaining == 2
    with pytest.raises(ValueError, match="integers"):
        FaultInjector.from_env({"DSSIDECAR_INJECT_OOM_ABOVE_BATCH": "many"})


def test_is_out_of_memory_recognises_oom_kinds() -> None:
    assert is_out_of_memory(KVPoolAllocationError("x"))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
