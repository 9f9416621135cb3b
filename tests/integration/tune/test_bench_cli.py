"""`dsagent bench` against the real sidecar, checked by an independent plain client; its error paths."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dsagent.loadgen.workload import load_workload
from dsagent.tune.engine import free_port
from sidecar_process import SidecarProcess

NUM_PROMPTS = 16
# Requests long enough (48-64 new tokens) that the server's work, not each client's per-request overhead or a
# burst of load from another process, decides a round's time.
AGREEMENT_WORKLOAD = "name: agreement\nprompt_tokens: {min: 8, max: 24}\noutput_tokens: {min: 48, max: 64}\n"


def _dsagent(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsagent.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _plain_sequential(base_url: str, workload: str = "tiny") -> tuple[int, int, float]:
    """An independent client: the same requests, one at a time with a plain synchronous httpx stream (the
    same streaming work for the server); counts from the final `usage` chunk."""
    model = httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"][0]["id"]
    specs = load_workload(workload).generate(NUM_PROMPTS, seed=0)
    completed = output_tokens = 0
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        for spec in specs:
            body = {"model": model, "prompt": spec.prompt, "max_tokens": spec.max_tokens, "temperature": 0.0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            usage = None
            with client.stream("POST", f"{base_url}/v1/completions", json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if line.startswith("data: {") and '"usage":{' in line.replace(" ", ""):
                        usage = json.loads(line[6:])["usage"]
            assert usage is not None
            completed += 1
            output_tokens += int(usage["completion_tokens"])
        elapsed = time.perf_counter() - started
    return completed, output_tokens, completed / elapsed


def _bench(base_url: str, json_path: Path, workload: str = "tiny") -> dict[str, float]:
    result = _dsagent("bench", base_url, "--workload", workload, "--num-prompts", str(NUM_PROMPTS), "--concurrency", "1",
                      "--goodput", "e2el:60000", "--json", str(json_path), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "request throughput" in result.stdout
    return dict(json.loads(json_path.read_text()))


@pytest.mark.slow
def test_bench_figures_match_an_independent_client(tune_sidecar: SidecarProcess, tmp_path: Path) -> None:
    workload_file = tmp_path / "agreement.yaml"
    workload_file.write_text(AGREEMENT_WORKLOAD)
    workload = str(workload_file)
    _plain_sequential(tune_sidecar.base_url, workload)  # warm the server once
    ratios = []
    plain_seconds = bench_seconds = 0.0
    for round_number in range(5):  # alternate, so both see the same machine load
        completed, output_tokens, plain_rate = _plain_sequential(tune_sidecar.base_url, workload)
        figures = _bench(tune_sidecar.base_url, tmp_path / f"bench-{round_number}.json", workload)
        assert figures["completed"] == completed == NUM_PROMPTS
        assert figures["failed"] == 0
        assert figures["total_output_tokens"] == output_tokens
        assert figures["request_goodput"] == pytest.approx(figures["request_throughput"])  # generous SLO
        for key in ("request_throughput", "output_throughput", "mean_ttft_ms", "p99_tpot_ms", "median_itl_ms",
                    "p99_e2el_ms"):
            assert figures[key] > 0, key
        ratios.append(figures["request_throughput"] / plain_rate)
        plain_seconds += completed / plain_rate
        bench_seconds += figures["completed"] / figures["request_throughput"]
    # Judged on the pooled rate (all requests of all rounds over all their time, for each client): a burst of
    # load from another process lands in one short round of one client and moves a per-round ratio by far
    # more than it moves the pooled one.
    ratio = plain_seconds / bench_seconds
    print(f"bench/plain request throughput per round {[round(r, 3) for r in ratios]}, pooled {ratio:.3f}")
    assert 0.9 <= ratio <= 1.1, f"bench / plain sequential request throughput: pooled {ratio:.3f}, per round {ratios}"


@pytest.mark.slow
def test_bench_window_mode_excludes_warmup(tune_sidecar: SidecarProcess, tmp_path: Path) -> None:
    json_path = tmp_path / "window.json"
    result = _dsagent("bench", tune_sidecar.base_url, "--workload", "tiny", "--duration", "2", "--warmup", "1",
                      "--concurrency", "4", "--json", str(json_path), "--quiet")
    assert result.returncode == 0, result.stderr
    figures = json.loads(json_path.read_text())
    assert figures["duration"] == pytest.approx(2.0)
    assert figures["completed"] > 0 and figures["warmup_requests"] > 0
    assert figures["request_throughput"] == pytest.approx(figures["completed"] / 2.0)


def test_bad_workload_file_is_one_line_and_nonzero(tmp_path: Path, tune_sidecar: SidecarProcess) -> None:
    bad = tmp_path / "workload.yaml"
    bad.write_text("prompt_tokens: {min: 4, max: 8}\noutput_tokens: {min: 0, max: 3}\n")
    for command in (["bench", tune_sidecar.base_url], ["tune", "--auto", "--engine-url", tune_sidecar.base_url,
                                                       "--control-token", "x", "--output", str(tmp_path / "t")]):
        result = _dsagent(*command, "--workload", str(bad))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{bad}:2: output_tokens.min" in lines[0], result.stderr


def test_unreachable_engine_is_one_line_and_nonzero(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    bench = _dsagent("bench", url, "--workload", "tiny", "--num-prompts", "2")
    tune = _dsagent("tune", "--auto", "--engine-url", url, "--control-token", "x", "--workload", "tiny",
                    "--output", str(tmp_path / "t"))
    for result, expected in ((bench, "no OpenAI-compatible server at"), (tune, "engine /control unreachable at")):
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and url in lines[0], result.stderr


def test_energy_objective_is_refused_without_a_gpu(tmp_path: Path) -> None:
    from dsagent.tune.energy import EnergyMeter, EnergyUnavailable

    try:
        EnergyMeter().close()
    except EnergyUnavailable:
        pass
    else:
        pytest.skip("this machine has an NVIDIA GPU with an energy counter: the objective is allowed here")
    result = _dsagent("tune", "--auto", "--objective", "energy", "--engine-url", "http://127.0.0.1:9",
                      "--control-token", "x", "--output", str(tmp_path / "t"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--objective energy refused" in lines[0], result.stderr
