"""scale: the replica count of a Deployment or StatefulSet, through the scale subresource.

Why the scale subresource with the official `kubernetes` client: it is what `kubectl scale` and the HPA
use, it needs only the `deployments/scale` (or `statefulsets/scale`) verbs in RBAC, and it works the same
in-cluster (service account) and from a kubeconfig. The change is a JSON patch of /spec/replicas; a 409
(someone else changed the object) is retried on a fresh read, a 403 or 404 is a failed Decision carrying
the API server's message (which names the missing RBAC verb or the object).

The HPA, when one owns the same object, will fight a manual scale: prefer letting rules move the HPA's
bounds, or scale objects without an HPA. Bounds: the action's min/max and actions.scale min/max_replicas.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from dsagent.actions.actuators.base import ActuatorError
from dsagent.actions.config import ScaleTargetConfig
from dsagent.actions.decision import Decision

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 3


def api_client_for(config: ScaleTargetConfig) -> Any:
    """A kubernetes ApiClient: api_url (no auth: tests, kubectl proxy) > in-cluster > kubeconfig."""
    import os

    from kubernetes import client
    from kubernetes import config as kube_config

    if config.api_url:
        configuration = client.Configuration()
        configuration.host = config.api_url.rstrip("/")
        return client.ApiClient(configuration)
    in_cluster = config.in_cluster if config.in_cluster is not None else bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if in_cluster:
        kube_config.load_incluster_config()
        return client.ApiClient()
    return kube_config.new_client_from_config(config_file=str(config.kubeconfig) if config.kubeconfig else None,
                                              context=config.context)


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    try:
        return str(json.loads(body or "").get("message") or body)
    except (TypeError, ValueError, AttributeError):
        return str(body or getattr(exc, "reason", exc))


class KubernetesScaleActuator:
    kinds: tuple[str, ...] = ("scale",)

    def __init__(self, config: ScaleTargetConfig, api_client: Any = None) -> None:
        from kubernetes import client

        if not config.name:
            raise ValueError("actions.scale.name is not set: name the Deployment or StatefulSet to scale")
        self.config = config
        self.name: str = config.name
        self.apps = client.AppsV1Api(api_client if api_client is not None else api_client_for(config))
        self.object_name = f"{config.kind}/{config.namespace}/{config.name}"

    def _read(self) -> Any:
        if self.config.kind == "StatefulSet":
            return self.apps.read_namespaced_stateful_set_scale(self.name, self.config.namespace)
        return self.apps.read_namespaced_deployment_scale(self.name, self.config.namespace)

    def _patch(self, replicas: int) -> Any:
        body = [{"op": "replace", "path": "/spec/replicas", "value": int(replicas)}]
        if self.config.kind == "StatefulSet":
            return self.apps.patch_namespaced_stateful_set_scale(self.name, self.config.namespace, body)
        return self.apps.patch_namespaced_deployment_scale(self.name, self.config.namespace, body)

    def _failed(self, verb: str, exc: Any) -> ActuatorError:
        status = getattr(exc, "status", None)
        return ActuatorError(f"{verb} {self.object_name} scale: {status} {getattr(exc, 'reason', '')}: {_api_message(exc)}",
                             retryable=status in (409, 429, 500, 503), detail={"status_code": status})

    def current(self, decision: Decision) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            scale = self._read()
        except ApiException as exc:
            raise self._failed("reading", exc) from exc
        except Exception as exc:  # connection refused, TLS, ...: the API server is not reachable
            raise ActuatorError(f"reading {self.object_name} scale: {type(exc).__name__}: {exc}") from exc
        return int(scale.spec.replicas or 0)

    def apply(self, decision: Decision) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        wanted = int(decision.new_value)
        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                scale = self._patch(wanted)
                return {"replicas": int(scale.spec.replicas), "object": self.object_name, "attempts": attempt}
            except ApiException as exc:
                if exc.status == 409 and attempt < CONFLICT_RETRIES:
                    log.info("scale %s: conflict (%s); re-reading and retrying", self.object_name, _api_message(exc))
                    self.current(decision)
                    continue
                raise self._failed("patching", exc) from exc
            except Exception as exc:
                raise ActuatorError(f"patching {self.object_name} scale: {type(exc).__name__}: {exc}") from exc
        raise ActuatorError(f"patching {self.object_name} scale: still conflicting after {CONFLICT_RETRIES} tries")
