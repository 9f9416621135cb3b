"""LLMEngine request semantics on a real tiny checkpoint: stop strings and stop tokens, max_tokens,
EOS, seeds, aborts freeing blocks, admission errors, and load-time integrity/format errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dssidecar.engine.config import EngineConfig
from dssidecar.engine.llm_engine import LLMEngine
from dssidecar.engine.protocol import (
    InvalidRequestError,
    QueueFullError,
    RequestOutput,
    RequestTooLongError,
    SamplingParams,
)
from dssidecar.integrity import IntegrityError, write_manifest
from dssidecar.models.loader import CheckpointError, load_checkpoint

GREEDY = dict(temperature=0.0, ignore_eos=True)


def make_engine(path: Path, **overrides: object) -> LLMEngine:
    settings: dict[str, object] = {"device": "cpu", "kv_cache_blocks": 128, "block_size": 8}
    settings.update(overrides)
    return LLMEngine.from_model_path(path, EngineConfig(**settings))  # type: ignore[arg-type]


def run_one(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> list[RequestOutput]:
    engine.add_request("req", prompt, params)
    outputs: list[RequestOutput] = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.request_id == "req"]
    return outputs


@pytest.fixture(scope="module")
def engine(qwen2_checkpoint_dir: Path) -> LLMEngine:
    return make_engine(qwen2_checkpoint_dir)


@pytest.fixture(scope="module")
def prompt(engine: LLMEngine) -> list[int]:
    assert engine.tokenizer is not None
    return engine.tokenizer.encode("def parse(text):\n    ")


def test_deltas_concatenate_to_the_decoded_completion(engine: LLMEngine, prompt: list[int]) -> None:
    outputs = run_one(engine, prompt, SamplingParams(max_tokens=20, **GREEDY))  # type: ignore[arg-type]
    assert outputs[-1].finished and outputs[-1].finish_reason == "length"
    assert all(not o.finished for o in outputs[:-1])
    tokens = [t for o in outputs for t in o.token_ids]
    assert len(tokens) == 20 and outputs[-1].completion_tokens == 20
    assert engine.tokenizer is not None
    assert "".join(o.text for o in outputs) == engine.tokenizer.decode(tokens)
    last = outputs[-1]
    assert last.first_token_time is not None and last.finish_time is not None
    assert last.arrival_time <= last.first_token_time <= last.finish_time


def test_stop_string_ends_the_request_and_is_trimmed(engine: LLMEngine, prompt: list[int]) -> None:
    full = run_one(engine, prompt, SamplingParams(max_tokens=30, **GREEDY))  # type: ignore[arg-type]
    text = "".join(o.text for o in full)
    stop = text[10:13]
    assert len(stop) == 3 and stop.strip(), f"completion too short or blank: {text!r}"
    stopped = run_one(engine, prompt, SamplingParams(max_tokens=30, stop=[stop], **GREEDY))  # type: ignore[arg-type]
    got = "".join(o.text for o in stopped)
    assert stopped[-1].finish_reason == "stop"
    assert got == text[: text.index(stop)]
    assert stop not in got


def test_stop_token_id_ends_the_request(engine: LLMEngine, prompt: list[int]) -> None:
    full = [t for o in run_one(engine, prompt, SamplingParams(max_tokens=12, **GREEDY)) for t in o.token_ids]  # type: ignore[arg-type]
    stop_id = full[5]
    outputs = run_one(engine, prompt, SamplingParams(max_tokens=12, stop_token_ids=[stop_id], **GREEDY))  # type: ignore[arg-type]
    tokens = [t for o in outputs for t in o.token_ids]
    assert outputs[-1].finish_reason == "stop"
    assert tokens == full[: full.index(stop_id) + 1]


def test_eos_stops_unless_ignore_eos(qwen2_checkpoint_dir: Path, prompt: list[int]) -> None:
    engine = make_engine(qwen2_checkpoint_dir)
    free_run = [t for o in run_one(engine, prompt, SamplingParams(max_tokens=10, **GREEDY)) for t in o.token_ids]  # type: ignore[arg-type]
    engine.eos_token_ids = frozenset({free_run[3]})  # pretend the 4th token is EOS
    outputs = run_one(engine, prompt, SamplingParams(max_tokens=10, temperature=0.0))
    assert outputs[-1].finish_reason == "stop" and outputs[-1].completion_tokens == free_run.index(free_run[3]) + 1
    ignoring = run_one(engine, prompt, SamplingParams(max_tokens=10, **GREEDY))  # type: ignore[arg-type]
    assert ignoring[-1].completion_tokens == 10


def test_seeded_sampling_is_reproducible_and_batch_independent(engine: LLMEngine, prompt: list[int]) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=7, ignore_eos=True)
    first = engine.generate([prompt], params)[0]
    second = engine.generate([prompt, prompt[:3], prompt[2:]], [params, SamplingParams(max_tokens=5), SamplingParams(max_tokens=9)])[0]
    assert first == second
    other_seed = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=1.0, seed=8, ignore_eos=True))[0]
    assert other_seed != first


def test_abort_frees_every_block(engine: LLMEngine, prompt: list[int]) -> None:
    engine.add_request("a", prompt * 5, SamplingParams(max_tokens=50, **GREEDY))  # type: ignore[arg-type]
    engine.add_request("b", prompt, SamplingParams(max_tokens=50, **GREEDY))  # type: ignore[arg-type]
    for _ in range(3):
        engine.step()
    assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks
    final = engine.abort_request("a")
    assert final is not None and final.finished and final.finish_reason == "abort"
    assert engine.abort_request("a") is None
    engine.abort_request("b")
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_admission_errors_name_the_problem(qwen2_checkpoint_dir: Path) -> None:
    engine = make_engine(qwen2_checkpoint_dir, max_waiting_requests=2, kv_cache_blocks=8)
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.add_request("e", [], SamplingParams())
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        engine.add_request("m", [1, 2], SamplingParams(max_tokens=0))
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        engine.add_request("v", [10**9], SamplingParams())
    with pytest.raises(RequestTooLongError, match="context length"):
        engine.add_request("l", [1] * 500, SamplingParams(max_tokens=100))
    with pytest.raises(RequestTooLongError, match="KV blocks"):
        engine.add_request("k", [1] * 60, SamplingParams(max_tokens=10))  # 70 tokens > 8 blocks of 8
    engine.add_request("q1", [1, 2], SamplingParams())
    engine.add_request("q2", [1, 2], SamplingParams())
    with pytest.raises(QueueFullError):
        engine.add_request("q3", [1, 2], SamplingParams())


def test_a_corrupt_weight_file_refuses_to_load(qwen2_checkpoint_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(qwen2_checkpoint_dir, copy)
    write_manifest(copy)
    load_checkpoint(copy)  # verifies fine
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors"):
        load_checkpoint(copy)


def test_missing_tensor_and_bad_config_are_named(qwen2_checkpoint_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "model"
    shutil.copytree(qwen2_checkpoint_dir, copy)
    tensors = load_file(str(copy / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        load_checkpoint(copy)
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = "gpt2"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        load_checkpoint(copy)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_other_precisions_load_and_generate(qwen2_checkpoint_dir: Path, prompt: list[int], precision: str) -> None:
    engine = make_engine(qwen2_checkpoint_dir, precision=precision)
    expected_kv = {"bf16": "torch.bfloat16", "int8": "torch.float32"}[precision]
    assert str(engine.runner.kv_cache.dtype) == expected_kv and engine.runner.precision == precision
    [tokens] = engine.generate([prompt], SamplingParams(max_tokens=8, **GREEDY))  # type: ignore[arg-type]
    assert len(tokens) == 8


def test_a_precision_the_device_cannot_run_is_refused_with_the_reason(qwen2_checkpoint_dir: Path) -> None:
    from dssidecar.precision import UnsupportedPrecisionError

    with pytest.raises(UnsupportedPrecisionError, match="fp8"):
        make_engine(qwen2_checkpoint_dir, precision="fp8", device="cpu")
