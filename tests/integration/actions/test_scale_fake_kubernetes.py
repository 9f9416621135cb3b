"""Scale actions through the official kubernetes client against the fake API server on loopback: scale
out and in within min/max, the longer scale-in cooldown, 409 retried, 403 and 404 as failed Decisions
carrying the API server's message. A live test runs against a real cluster when
DSAGENT_TEST_KUBECONFIG and DSAGENT_TEST_K8S_DEPLOYMENT (namespace/name) are set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from dsagent.actions import ActionsConfig, ActuatorRegistry, Guard
from dsagent.actions.actuators.scale import KubernetesScaleActuator
from dsagent.actions.config import ScaleTargetConfig
from dsagent.actions.decision import Reason
from dsagent.actions.dispatcher import Dispatcher
from dsagent.actions.spec import parse_actions

from tests.fakes.kubernetes_api import FakeKubernetesApi


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeKubernetesApi, str]]:
    fake = FakeKubernetesApi()
    fake.add("deployments", "llm", "vllm", 5)
    fake.add("statefulsets", "llm", "engine", 4)
    url = fake.start()
    yield fake, url
    fake.stop()


def dispatcher(url: str, clock: Clock, kind: str = "Deployment", name: str = "vllm", **config: Any) -> Dispatcher:
    target = ScaleTargetConfig(kind=kind, name=name, namespace="llm", api_url=url)  # type: ignore[arg-type]
    guard = Guard(ActionsConfig(scale=target, **config), ActuatorRegistry([KubernetesScaleActuator(target)]), clock=clock)
    return Dispatcher(guard, scale_target=f"{kind}/llm/{name}", replicas_bounds=(target.min_replicas, target.max_replicas),
                      clock=clock)


def scale(d: Dispatcher, replicas: Any, **body: Any) -> Any:
    [spec] = parse_actions([{"scale": {"replicas": replicas, **body}}], "test")
    return d.submit_spec(spec, Reason("rule", rule="Busy", value=0.95))


def test_scale_out_then_in_after_the_longer_cooldown_within_bounds(fake_api: tuple[FakeKubernetesApi, str]) -> None:
    fake, url = fake_api
    clock = Clock()
    d = dispatcher(url, clock, scale_out_cooldown_seconds=60, scale_in_cooldown_seconds=300, hysteresis_seconds=0)
    assert scale(d, "+1").status == "applied" and fake.replicas("deployments", "llm", "vllm") == 6
    clock.now += 61
    out = scale(d, "x10", max=7)
    assert out.status == "applied" and fake.replicas("deployments", "llm", "vllm") == 7  # capped at max
    clock.now += 61
    early = scale(d, "-1")
    assert early.status == "skipped" and "cooldown 300" in early.reason
    clock.now += 300
    assert scale(d, "-1").status == "applied" and fake.replicas("deployments", "llm", "vllm") == 6
    clock.now += 301
    assert scale(d, 1).status == "applied" and fake.replicas("deployments", "llm", "vllm") == 4  # never below min 4
    clock.now += 301
    floor = scale(d, "-1")
    assert floor.status == "skipped" and "already 4" in floor.reason
    patches = [body for method, _, body in fake.requests if method == "PATCH"]
    assert patches[0] == [{"op": "replace", "path": "/spec/replicas", "value": 6}]


def test_statefulset_scale(fake_api: tuple[FakeKubernetesApi, str]) -> None:
    fake, url = fake_api
    outcome = scale(dispatcher(url, Clock(), kind="StatefulSet", name="engine"), 8)
    assert outcome.status == "applied" and fake.replicas("statefulsets", "llm", "engine") == 8


def test_conflict_is_retried_on_a_fresh_read(fake_api: tuple[FakeKubernetesApi, str]) -> None:
    fake, url = fake_api
    fake.conflicts_to_inject = 1
    outcome = scale(dispatcher(url, Clock()), "+1")
    assert outcome.status == "applied" and outcome.detail["attempts"] == 2
    assert fake.replicas("deployments", "llm", "vllm") == 6


def test_forbidden_and_not_found_fail_with_the_api_servers_message(fake_api: tuple[FakeKubernetesApi, str]) -> None:
    fake, url = fake_api
    fake.forbidden.add(("patch", "deployments"))
    forbidden = scale(dispatcher(url, Clock()), "+1")
    assert forbidden.status == "failed"
    assert '403 Forbidden: deployments.apps "vllm" is forbidden' in forbidden.reason
    assert 'cannot patch resource "deployments/scale"' in forbidden.reason
    missing = scale(dispatcher(url, Clock(), name="gone"), "+1")
    assert missing.status == "failed" and 'deployments.apps "gone" not found' in missing.reason
    assert fake.replicas("deployments", "llm", "vllm") == 5


def test_unreachable_api_server_is_a_failed_decision() -> None:
    outcome = scale(dispatcher("http://127.0.0.1:9", Clock()), "+1")
    assert outcome.status == "failed" and "reading Deployment/llm/vllm scale" in outcome.reason


@pytest.mark.live
@pytest.mark.skipif(not (os.environ.get("DSAGENT_TEST_KUBECONFIG") and os.environ.get("DSAGENT_TEST_K8S_DEPLOYMENT")),
                    reason="set DSAGENT_TEST_KUBECONFIG and DSAGENT_TEST_K8S_DEPLOYMENT=namespace/name for a real cluster")
def test_live_cluster_scale_read_and_same_value_patch() -> None:
    namespace, name = os.environ["DSAGENT_TEST_K8S_DEPLOYMENT"].split("/", 1)
    target = ScaleTargetConfig(name=name, namespace=namespace, kubeconfig=os.environ["DSAGENT_TEST_KUBECONFIG"],
                               min_replicas=0, max_replicas=1000)
    actuator = KubernetesScaleActuator(target)
    from dsagent.actions.decision import Decision

    probe = Decision(action="scale", target="scale:x", new_value=None, reason=Reason("operator"))
    replicas = actuator.current(probe)
    probe.new_value = replicas
    assert actuator.apply(probe)["replicas"] == replicas
