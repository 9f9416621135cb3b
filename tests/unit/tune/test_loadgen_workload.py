"""Workloads: built-in profiles are deterministic; files and stored records load; bad input names file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dsagent.loadgen.workload import BUILTIN_PROFILES, WorkloadError, load_workload


def test_builtin_profiles_are_deterministic_and_within_their_ranges() -> None:
    for name in ("chat", "summarisation", "code", "tiny"):
        profile = load_workload(name)
        first, second = profile.generate(20, seed=3), profile.generate(20, seed=3)
        assert first == second
        assert first != profile.generate(20, seed=4)
        assert profile.output_tokens is not None and profile.prompt_tokens is not None
        for spec in first:
            assert profile.output_tokens.min <= spec.max_tokens <= profile.output_tokens.max
            assert spec.prompt_words <= profile.prompt_tokens.max


def test_code_profile_shares_a_prefix() -> None:
    profile = BUILTIN_PROFILES["code"]
    prompts = [spec.prompt for spec in profile.generate(50)]
    prefix = " ".join(prompts[0].split()[:profile.shared_prefix_tokens])
    assert sum(prompt.startswith(prefix) for prompt in prompts) >= 25


def test_yaml_workload_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("prompt_tokens: {min: 4, max: 8}\noutput_tokens: {min: 2, max: 3}\nendpoint: chat\n")
    profile = load_workload(str(path))
    assert profile.name == "mine" and profile.endpoint == "chat"
    assert all(2 <= spec.max_tokens <= 3 for spec in profile.generate(10))


def test_bad_yaml_value_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nprompt_tokens: {min: 4, max: 8}\noutput_tokens:\n  min: 9\n  max: 3\n")
    with pytest.raises(WorkloadError, match=rf"^{path}:3: output_tokens: .*max \(3\) must be >= min \(9\)"):
        load_workload(str(path))
    path.write_text("prompt_tokens: {min: 4, max: 8}\noutput_tokens: {min: 1, max: 2}\nmax_tokns: 3\n")
    with pytest.raises(WorkloadError, match=rf"^{path}:3: max_tokns: Extra inputs"):
        load_workload(str(path))
    path.write_text("prompt_tokens: [\n")
    with pytest.raises(WorkloadError, match=rf"^{path}:2: not valid YAML"):
        load_workload(str(path))


def test_unknown_name_lists_the_profiles() -> None:
    with pytest.raises(WorkloadError, match="not a built-in profile .*chat, code, summarisation, tiny"):
        load_workload("no-such-workload")


def test_ndjson_request_records_replay_their_lengths(tmp_path: Path) -> None:
    path = tmp_path / "logs-dsagent.requests.ndjson"
    records = [{"_id": "a", "request_id": "r1", "prompt_length": 12, "tokens_generated": 5},
               {"_id": "b", "kind": "other document"},
               {"_id": "c", "request_id": "r2", "prompt_length": 30, "tokens_generated": 9}]
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    profile = load_workload(str(path))
    specs = profile.generate(4)
    assert [spec.max_tokens for spec in specs] == [5, 9, 5, 9]
    assert [spec.prompt_words for spec in specs[:2]] == [12, 30]


def test_ndjson_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "records.ndjson"
    path.write_text('{"prompt_length": 3, "tokens_generated": 2}\n{"prompt_length": "x", "tokens_generated": 2}\n')
    with pytest.raises(WorkloadError, match=rf"^{path}:2: prompt_length must be a non-negative integer"):
        load_workload(str(path))
    path.write_text('{"prompt_length": 3, "tokens_generated": 2}\n{not json\n')
    with pytest.raises(WorkloadError, match=rf"^{path}:2: not a JSON object"):
        load_workload(str(path))

