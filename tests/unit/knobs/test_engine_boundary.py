"""The knobs reach the engine only through its narrow API, and the knobs package never imports the API.

Why: before issue 19 six modules edited the scheduler, the block manager's free list and the engine's
private methods directly, and api/ and the knobs imported each other, so every new knob was a change in
many places. These tests keep it from creeping back."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from dssidecar.engine.config import EngineConfig
from dssidecar.engine.llm_engine import LLMEngine

PACKAGE = Path(__file__).resolve().parents[3] / "sidecar" / "dssidecar"
OUTSIDE_ENGINE = sorted(p for p in PACKAGE.rglob("*.py") if "engine" not in p.relative_to(PACKAGE).parts[:1])
ENGINE_INTERNALS = re.compile(r"\.(scheduler|block_manager|oom_guard|step_hooks|_requests|_apply_pending_runner|_kv_target_blocks)\b")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_nothing_outside_the_engine_touches_its_internals() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in OUTSIDE_ENGINE
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ENGINE_INTERNALS.search(line)
    ]
    assert OUTSIDE_ENGINE and not offenders, offenders


def test_the_knobs_package_never_imports_the_api() -> None:
    for path in sorted((PACKAGE / "knobs").glob("*.py")):
        api_imports = {name for name in imported_modules(path) if name.startswith("dssidecar.api")}
        assert not api_imports, f"{path.name} imports {api_imports}"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LLMEngine:
    return LLMEngine.from_model_path(tiny_model_dir, EngineConfig(kv_cache_blocks=64, device="cpu", max_model_len=256))


def test_set_limits_changes_config_and_scheduler_and_refuses_nonsense(engine: LLMEngine) -> None:
    engine.set_limits(max_batch_size=3, max_num_batched_tokens=100)
    assert (engine.config.max_batch_size, engine.effective_max_batch_size) == (3, 3)
    assert engine.config.max_num_batched_tokens == 100
    with pytest.raises(ValueError, match="max_batch_size"):
        engine.set_limits(max_batch_size=0)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        engine.set_limits(max_num_batched_tokens=0)
    assert engine.config.max_batch_size == 3  # a refused change leaves the limits as they were


def test_replace_runner_records_precision_and_follows_a_resized_pool(engine: LLMEngine) -> None:
    runner = engine.build_runner(engine.runner.model, precision="fp32", backend="eager")
    engine.resize_kv_pool(80)  # the pool grows after the runner was built
    installed = engine.replace_runner(runner)
    assert installed.num_blocks == 80 == engine.runner.num_blocks and engine.runner is installed
    assert (engine.config.precision, engine.config.backend) == ("fp32", "eager")
    assert engine.kv_cache_blocks == 80 and engine.kv_cache_blocks_pending_release == 0
    assert engine.warm_up(installed) >= 0.0
