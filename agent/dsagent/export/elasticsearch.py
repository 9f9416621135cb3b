"""Elasticsearch destination: data streams, bulk `create` with deterministic ids, per-item outcomes.

A retry or a replay after a crash re-sends documents that may already be stored; because every action
is `create` with the document's deterministic `_id`, Elasticsearch answers 409 for those and we count
that as delivered, so each document is stored exactly once. Whole-request failures (connection errors,
timeouts, 429, 5xx) and per-item 429/5xx are retried by the drainer with backoff; per-item mapping or
parse errors (400) can never succeed and go to the dead-letter file with the reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from dsagent.export.config import ElasticsearchConfig
from dsagent.export.destination import Destination, SendOutcome
from dsagent.export.documents import METRICS, Document
from dsagent.export.es_templates import all_templates
from dsagent.export.spool import SpoolEntry

log = logging.getLogger(__name__)

#: per-item statuses worth retrying; everything else that is not 2xx/409 is dead-lettered.
RETRY_ITEM_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: whole-request statuses that one bad or oversized document can cause: split the batch to find it.
SPLIT_REQUEST_STATUSES = frozenset({400, 413})
#: a 404 on an item means the data stream or its template vanished: reinstall templates and retry.
REINSTALL_ITEM_STATUSES = frozenset({404})

BULK_FILTER_PATH = "errors,items.*.status,items.*.error.type,items.*.error.reason"


def build_client(config: ElasticsearchConfig) -> Any:
    """An elasticsearch-py client with auth from the config and its own retries off (the drainer retries)."""
    from elasticsearch import Elasticsearch

    kwargs: dict[str, Any] = {
        "hosts": config.urls(),
        "request_timeout": config.request_timeout_seconds,
        "max_retries": 0,
        "retry_on_timeout": False,
        "verify_certs": config.verify_certs,
    }
    if config.api_key is not None:
        kwargs["api_key"] = config.api_key.get_secret_value()
    if config.username is not None and config.password is not None:
        kwargs["basic_auth"] = (config.username, config.password.get_secret_value())
    if config.ca_certs is not None:
        kwargs["ca_certs"] = str(config.ca_certs)
    return Elasticsearch(**kwargs)


class ElasticsearchDestination(Destination):
    def __init__(self, config: ElasticsearchConfig, client: Any | None = None, name: str = "elasticsearch") -> None:
        self.name = name
        self.config = config
        self._client = client if client is not None else build_client(config)
        self._templates_installed = not config.install_templates

    def stream_name(self, document: Document) -> str:
        return f"{document.data_type}-{self.config.index_prefix}.{document.dataset}-{self.config.namespace}"

    def prepare(self) -> str | None:
        if self._templates_installed:
            return None
        try:
            for name, body in all_templates(self.config.index_prefix, self.config.metrics_time_series_mode).items():
                self._client.indices.put_index_template(name=name, **body)
        except Exception as error:  # noqa: BLE001 - any failure means "not ready yet, retry"
            return f"installing index templates failed: {_describe(error)}"
        self._templates_installed = True
        return None

    def bulk_body(self, entries: Sequence[SpoolEntry]) -> bytes:
        parts: list[bytes] = []
        omit_metric_ids = self.config.metrics_time_series_mode
        action_prefixes: dict[str, bytes] = {}
        for entry in entries:
            prefix = action_prefixes.get(entry.stream)
            if prefix is None:
                prefix = b'{"create":{"_index":' + json.dumps(entry.stream).encode()
                action_prefixes[entry.stream] = prefix
            if omit_metric_ids and entry.stream.startswith(METRICS + "-"):
                # a TSDS derives its own deterministic _id from dimensions + timestamp
                parts.append(prefix + b"}}")
            elif entry.doc_id.isalnum() and entry.doc_id.isascii():  # our hex ids: nothing to escape
                parts.append(prefix + b',"_id":"' + entry.doc_id.encode() + b'"}}')
            else:
                parts.append(prefix + b',"_id":' + json.dumps(entry.doc_id).encode() + b"}}")
            parts.append(entry.payload)
        parts.append(b"")
        return b"\n".join(parts)

    def send(self, entries: Sequence[SpoolEntry]) -> SendOutcome:
        if not entries:
            return SendOutcome()
        try:
            response = self._client.bulk(operations=self.bulk_body(entries), filter_path=BULK_FILTER_PATH)
        except Exception as error:  # noqa: BLE001 - connection errors, timeouts, 429/5xx: retry the batch
            status = getattr(getattr(error, "meta", None), "status", None)
            if status in SPLIT_REQUEST_STATUSES:
                return self._split_or_dead_letter(entries, f"bulk request refused: {_describe(error)}")
            return SendOutcome.retry_all(entries, f"bulk request failed: {_describe(error)}")
        body = response.body if hasattr(response, "body") else response
        items = body.get("items") or []
        if not body.get("errors"):
            return SendOutcome(acked=[entry.seq for entry in entries])
        if len(items) != len(entries):
            return SendOutcome.retry_all(
                entries, f"bulk response had {len(items)} items for {len(entries)} actions"
            )
        outcome = SendOutcome()
        for entry, item in zip(entries, items, strict=True):
            result = next(iter(item.values())) if item else {}
            status = int(result.get("status", 0))
            if 200 <= status < 300 or status == 409:
                outcome.acked.append(entry.seq)
            elif status in RETRY_ITEM_STATUSES or status == 0:
                outcome.retry.append(entry.seq)
                outcome.retry_reason = f"item status {status}: {_item_error(result)}"
            elif status in REINSTALL_ITEM_STATUSES:
                self._templates_installed = not self.config.install_templates
                outcome.retry.append(entry.seq)
                outcome.retry_reason = f"item status {status}: {_item_error(result)}"
            else:
                outcome.dead.append((entry, f"status {status}: {_item_error(result)}"))
        return outcome

    def _split_or_dead_letter(self, entries: Sequence[SpoolEntry], reason: str) -> SendOutcome:
        """A whole request refused as too large (413) or unparsable (400): halve it to isolate the culprit;
        a single document refused this way can never succeed and is dead-lettered."""
        if len(entries) == 1:
            return SendOutcome(dead=[(entries[0], reason)])
        half = len(entries) // 2
        first, second = self.send(entries[:half]), self.send(entries[half:])
        return SendOutcome(
            acked=first.acked + second.acked,
            dead=first.dead + second.dead,
            retry=first.retry + second.retry,
            retry_reason=second.retry_reason or first.retry_reason,
        )

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing the Elasticsearch client failed", exc_info=True)


def _item_error(result: dict[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"
    return str(error or "no error detail")


def _describe(error: BaseException) -> str:
    status = getattr(getattr(error, "meta", None), "status", None)
    text = str(error) or type(error).__name__
    return f"{type(error).__name__} (status {status}): {text}" if status else f"{type(error).__name__}: {text}"
