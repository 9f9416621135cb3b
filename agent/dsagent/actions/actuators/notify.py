"""notify and webhook: tell someone (Alertmanager-compatible receivers, any HTTP endpoint) that a rule fired.

Why the Alertmanager webhook format (payload version 4): every on-call tool already accepts it
(PagerDuty and Opsgenie bridges, Slack relays, alertmanager-webhook-logger), so a `notify` action plugs
into what an operator runs. The generic webhook posts the rule event as JSON (or the rule's own body).
A receiver answering non-2xx or unreachable is a `failed` Decision with the status and body excerpt.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import httpx

from dsagent.actions.actuators.base import ActuatorError
from dsagent.actions.config import NotifyConfig
from dsagent.actions.decision import Decision

ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "not set" for endsAt of a firing alert


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def alertmanager_payload(decision: Decision, *, receiver: str = "dsagent", external_url: str = "") -> dict[str, Any]:
    """An Alertmanager webhook body (version 4) for the rule behind `decision` (firing or resolved)."""
    reason = decision.reason
    status = "resolved" if decision.params.get("state") == "resolved" else "firing"
    labels = {"alertname": reason.rule or "dsagent", **reason.labels}
    annotations = {str(k): str(v) for k, v in (decision.params.get("annotations") or {}).items()}
    if reason.value is not None:
        annotations.setdefault("value", f"{reason.value:.6g}")
    active_since = decision.params.get("active_since_seconds")  # RuleEvent: when it first became pending
    starts = float(active_since) if isinstance(active_since, int | float) else decision.at_seconds
    fingerprint = hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]
    alert = {
        "status": status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": _iso(starts),
        "endsAt": _iso(decision.at_seconds) if status == "resolved" else ZERO_TIME,
        "generatorURL": f"{external_url.rstrip('/')}/#rules" if external_url else "",
        "fingerprint": fingerprint,
    }
    group_labels = {"alertname": labels["alertname"]}
    return {
        "version": "4",
        "groupKey": "{}:{alertname=" + json.dumps(labels["alertname"]) + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [alert],
    }


def _post(client: httpx.Client, url: str, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    try:
        if isinstance(body, str):
            response = client.post(url, content=body.encode(), headers={"Content-Type": "text/plain", **(headers or {})})
        else:
            response = client.post(url, json=body, headers=headers or {})
    except httpx.HTTPError as exc:
        raise ActuatorError(f"{url} unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc
    if not 200 <= response.status_code < 300:
        raise ActuatorError(f"{url} answered {response.status_code}: {response.text[:200]}",
                            retryable=response.status_code >= 500, detail={"status_code": response.status_code})
    return {"status_code": response.status_code, "url": url}


class NotifyActuator:
    kinds: tuple[str, ...] = ("notify",)

    def __init__(self, config: NotifyConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._client = httpx.Client(timeout=config.timeout_seconds, transport=transport)

    def current(self, decision: Decision) -> Any:
        return None

    def apply(self, decision: Decision) -> dict[str, Any]:
        url = decision.params.get("url") or self.config.url
        if not url:
            raise ActuatorError("notify: no receiver url (give notify: {url: ...} or actions.notify.url)")
        payload = alertmanager_payload(decision, external_url=self.config.external_url)
        return _post(self._client, str(url), payload)


class WebhookActuator:
    kinds: tuple[str, ...] = ("webhook",)

    def __init__(self, timeout_seconds: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(timeout=timeout_seconds, transport=transport)

    def current(self, decision: Decision) -> Any:
        return None

    def apply(self, decision: Decision) -> dict[str, Any]:
        body = decision.params.get("body")
        if body is None:
            reason = decision.reason
            body = {"rule": reason.rule, "state": decision.params.get("state", "firing"), "value": reason.value,
                    "labels": reason.labels, "annotations": decision.params.get("annotations") or {},
                    "expr": reason.expr, "decided_at": _iso(decision.at_seconds)}
        return _post(self._client, str(decision.params["url"]), body, decision.params.get("headers"))
