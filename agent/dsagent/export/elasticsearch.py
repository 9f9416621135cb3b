"""Elasticsearch destination: data streams, bulk `create` with deterministic ids, per-item outcomes.

A retry or a replay after a crash re-sends documents that may already be stored; because every action
is `create` with the document's deterministic `_id`, Elasticsearch answers 409 for those and we count
that as delivered, so each document is stored exactly once.

Classification, as Elastic Agent does it: whole-request failures (connection errors, timeouts, 429, 5xx)
and per-item 429/5xx are retried with backoff. Authentication and authorization failures (401/403, per
request or per item: an API key without write rights) and a malformed request (400) are not the
documents' fault: they are retried and surfaced as a refusal (a counter, the status, a log line per change)
and never dead-lettered. A 413 splits the batch. A per-item 404 (data stream missing, e.g.
`auto_create_index: false`) reinstalls the templates and is retried; the drainer moves a document that keeps
failing at the head of the queue aside so it cannot block those behind it. A document is dead-lettered only
when its own item fails with a mapping/parse error while other items of the same request succeed: if every
item fails, the cluster (a broken template) is the suspect, not the documents. A 403 while installing the
index templates (a key allowed to write but not to manage templates) does not stop sending: the exporter
sends into whatever templates the cluster has and says so in its status, retrying the install later.
"""

from __future__ import annotations

import json
import logging
import time
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
#: whole-request status that one oversized document can cause: split the batch to find it.
SPLIT_REQUEST_STATUSES = frozenset({413})
#: the cluster refuses us, not the documents: retry, surface, never dead-letter.
REFUSED_STATUSES = frozenset({400, 401, 403})
#: a 404 on an item means the data stream or its template vanished: reinstall templates and retry.
REINSTALL_ITEM_STATUSES = frozenset({404})
#: per-item failures that are the document's own (its fields do not fit the mapping).
DOCUMENT_ERROR_STATUSES = frozenset({400})
#: how long to send without templates (after a 403 installing them) before trying the install again
TEMPLATE_RETRY_SECONDS = 60.0

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
        self.templates_status = "not installed yet" if config.install_templates else "not managed (install_templates: false)"
        self._templates_retry_at = 0.0

    def stream_name(self, document: Document) -> str:
        return f"{document.data_type}-{self.config.index_prefix}.{document.dataset}-{self.config.namespace}"

    def prepare(self) -> str | None:
        if self._templates_installed or time.monotonic() < self._templates_retry_at:
            return None
        try:
            for name, body in all_templates(self.config.index_prefix, self.config.metrics_time_series_mode).items():
                self._client.indices.put_index_template(name=name, **body)
        except Exception as error:  # noqa: BLE001 - any failure means "not ready yet, retry"
            if _status(error) in (401, 403):
                # allowed to write (maybe) but not to manage templates: send into what the cluster has
                self.templates_status = (f"not installed ({_describe(error)}); sending without them, retrying the "
                                         f"install every {TEMPLATE_RETRY_SECONDS:g} s: grant manage_index_templates "
                                         "or install them once with a privileged key")
                if self._templates_retry_at == 0.0:
                    log.warning("%s: index templates %s", self.name, self.templates_status)
                self._templates_retry_at = time.monotonic() + TEMPLATE_RETRY_SECONDS
                return None
            return f"installing index templates failed: {_describe(error)}"
        self._templates_installed = True
        self._templates_retry_at = 0.0
        self.templates_status = "installed"
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
            status = _status(error)
            if status in SPLIT_REQUEST_STATUSES:
                return self._split_or_dead_letter(entries, f"bulk request refused: {_describe(error)}")
            outcome = SendOutcome.retry_all(entries, f"bulk request failed: {_describe(error)}")
            outcome.refused = status in REFUSED_STATUSES
            return outcome
        body = response.body if hasattr(response, "body") else response
        items = body.get("items") or []
        if not body.get("errors"):
            return SendOutcome(acked=[entry.seq for entry in entries])
        if len(items) != len(entries):
            return SendOutcome.retry_all(
                entries, f"bulk response had {len(items)} items for {len(entries)} actions"
            )
        outcome = SendOutcome(item_level=True)
        document_errors: list[tuple[SpoolEntry, str]] = []
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
                outcome.refused = True
            elif status in DOCUMENT_ERROR_STATUSES and "security" not in _item_error(result):
                document_errors.append((entry, f"status {status}: {_item_error(result)}"))
            else:  # 401/403 security_exception and anything unknown: the cluster's refusal, not the document's
                outcome.retry.append(entry.seq)
                outcome.retry_reason = f"item status {status}: {_item_error(result)}"
                outcome.refused = True
        if document_errors and outcome.acked:
            outcome.dead.extend(document_errors)  # the rest of the batch went in: these documents are at fault
        elif document_errors:
            outcome.retry.extend(entry.seq for entry, _ in document_errors)
            outcome.retry_reason = (f"every item failed, {len(document_errors)} with a mapping error "
                                    f"({document_errors[0][1]}): retrying, the index template may be wrong")
            outcome.refused = True
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
            refused=first.refused or second.refused,
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


def _status(error: BaseException) -> int | None:
    status = getattr(getattr(error, "meta", None), "status", None)
    return int(status) if isinstance(status, int) else None


def _describe(error: BaseException) -> str:
    status = _status(error)
    text = str(error) or type(error).__name__
    return f"{type(error).__name__} (status {status}): {text}" if status else f"{type(error).__name__}: {text}"
