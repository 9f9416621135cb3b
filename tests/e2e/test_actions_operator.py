"""End to end, an operator's Decisions (`dsagent act`) on the real flow: agent + real sidecar + fake GPU +
fake Elasticsearch + fake Kubernetes API. Each change goes through the guard to its actuator (the sidecar's
/control with the token the agent created, the scale subresource, the simulated GPU's power limit), and its
audit document appears in the NDJSON output, in Elasticsearch and in `dsagent status`; the counters on
/metrics move."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.actions_harness import AgentUnderTest, es_actions, wait_for
from tests.fakes.elasticsearch import FakeElasticsearch
from tests.fakes.kubernetes_api import FakeKubernetesApi

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[AgentUnderTest, FakeElasticsearch, FakeKubernetesApi]]:
    es = FakeElasticsearch().start()
    kube = FakeKubernetesApi()
    kube.add("deployments", "llm", "dssidecar", 5)
    kube_url = kube.start()
    agent = AgentUnderTest(tmp_path_factory.mktemp("operator"), tiny_model_dir, {
        "sources": {"gpu": {"backend": "fake", "fake_gpu_count": 2}},
        "intervals": {"collect_seconds": 0.5, "evaluate_seconds": 0.5},
        "export": {"elasticsearch": {"url": es.url}, "metric_export_interval_seconds": 2},
        "actions": {"scale": {"name": "dssidecar", "namespace": "llm", "api_url": kube_url}},
    })
    try:
        agent.wait_ready()
        yield agent, es, kube
    finally:
        code = agent.stop()
        es.stop()
        kube.stop()
        assert code == 0, agent.log_text()[-3000:]


def test_knob_change_lands_in_the_engine_and_in_every_audit_trail(
        world: tuple[AgentUnderTest, FakeElasticsearch, FakeKubernetesApi]) -> None:
    agent, es, _ = world
    before = agent.knobs()["max_batch_size"]
    result = agent.cli("act", "max_batch_size=x0.5", "--reason", "runbook step 3")
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.startswith("applied")
    assert agent.knobs()["max_batch_size"] == max(1, before // 2)

    [event] = [e for e in agent.actions() if e.get("knob") == "max_batch_size"]
    assert (event["outcome"], event["old"], event["new"], event["source"]) == ("applied", before, max(1, before // 2),
                                                                               "operator")
    assert "runbook step 3" in event["reason"] and event["decision_id"]
    es_events = wait_for(lambda: [d for d in es_actions(es) if d.get("decision_id") == event["decision_id"]], 30,
                         "the audit document in Elasticsearch")
    assert es_events[0]["outcome"] == "applied"
    status = agent.cli("status")
    assert status.returncode == 0 and "max_batch_size" in status.stdout and "applied" in status.stdout
    metrics = httpx.get(agent.api_url + "/metrics", timeout=5).text
    assert 'dsagent_actions_total{action="set_knob",outcome="applied"}' in metrics


def test_scale_and_power_through_their_actuators(world: tuple[AgentUnderTest, FakeElasticsearch, FakeKubernetesApi]
                                                 ) -> None:
    agent, _, kube = world
    assert agent.cli("act", "scale", "+1").returncode == 0
    assert kube.replicas("deployments", "llm", "dssidecar") == 6
    assert agent.cli("act", "power", "80%").returncode == 0

    def power_limits() -> list[float]:
        text = httpx.get(agent.api_url + "/metrics", timeout=5).text
        return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("dsagent_gpu_power_limit_watts{")]

    assert wait_for(lambda: power_limits() == [560.0, 560.0], 10, "the simulated GPUs to report 560 W")
    refused = agent.cli("act", "power", "100")  # below the H100's 200 W minimum: NVML's limits refuse it
    assert refused.returncode == 1 and "outside what NVML allows" in refused.stdout


def test_dry_run_and_bad_input(world: tuple[AgentUnderTest, FakeElasticsearch, FakeKubernetesApi]) -> None:
    agent, _, kube = world
    replicas = kube.replicas("deployments", "llm", "dssidecar")
    dry = agent.cli("act", "scale", "+1", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("dry_run")
    assert kube.replicas("deployments", "llm", "dssidecar") == replicas
    bad = agent.cli("act", "max_batch=4")
    assert bad.returncode == 2 and "unknown knob 'max_batch'" in bad.stderr and len(bad.stderr.splitlines()) == 1
