"""The Elasticsearch destination: templates first, create with ids, 409 = delivered, retry vs dead letter."""

from __future__ import annotations

import json
from pathlib import Path

from dsagent.export.config import ElasticsearchConfig
from dsagent.export.destination import DeadLetterFile
from dsagent.export.drainer import Backoff, SpoolDrainer
from dsagent.export.elasticsearch import ElasticsearchDestination
from dsagent.export.spool import METRIC, REQUEST, Spool, SpoolEntry, SpoolRecord

from tests.fakes.elasticsearch import FakeElasticsearch

REQUESTS = "logs-dsagent.requests-default"


def entry(seq: int, doc: dict[str, object], stream: str = REQUESTS, kind: str = REQUEST) -> SpoolEntry:
    return SpoolEntry(seq, kind, stream, f"id-{seq}", json.dumps(doc).encode())


def request_doc(n: int) -> dict[str, object]:
    return {"@timestamp": "2026-11-23T00:00:00.000000Z", "request_id": f"r{n}", "prompt_length": n}


def destination(fake: FakeElasticsearch, **overrides: object) -> ElasticsearchDestination:
    return ElasticsearchDestination(ElasticsearchConfig.model_validate({"url": fake.url, **overrides}))


def test_prepare_installs_the_three_templates_with_data_streams(fake_es: FakeElasticsearch) -> None:
    dest = destination(fake_es)
    assert dest.prepare() is None
    assert set(fake_es.templates) == {"dsagent-metrics", "dsagent-requests", "dsagent-actions"}
    for body in fake_es.templates.values():
        assert "data_stream" in body and body["priority"] > 100
    assert fake_es.templates["dsagent-metrics"]["index_patterns"] == ["metrics-dsagent.*-*"]


def test_prepare_reports_why_while_the_cluster_is_down(fake_es: FakeElasticsearch) -> None:
    fake_es.set_faults(status=503, paths=("/_index_template",))
    reason = destination(fake_es).prepare()
    assert reason is not None and "503" in reason


def test_send_creates_documents_in_a_data_stream_with_their_ids(fake_es: FakeElasticsearch) -> None:
    dest = destination(fake_es)
    dest.prepare()
    outcome = dest.send([entry(1, request_doc(1)), entry(2, request_doc(2))])
    assert outcome.acked == [1, 2] and not outcome.retry and not outcome.dead
    assert set(fake_es.documents(REQUESTS)) == {"id-1", "id-2"}
    assert fake_es.data_streams() == [REQUESTS]


def test_resending_existing_ids_is_delivered_not_duplicated(fake_es: FakeElasticsearch) -> None:
    dest = destination(fake_es)
    dest.prepare()
    dest.send([entry(1, request_doc(1))])
    outcome = dest.send([entry(1, request_doc(1)), entry(2, request_doc(2))])
    assert outcome.acked == [1, 2]
    assert fake_es.count(REQUESTS) == 2


def test_whole_request_429_and_503_are_retried(fake_es: FakeElasticsearch) -> None:
    dest = destination(fake_es)
    dest.prepare()
    for status in (429, 503):
        fake_es.set_faults(status=status, requests=1)
        outcome = dest.send([entry(1, request_doc(1))])
        assert outcome.retry == [1] and str(status) in outcome.retry_reason
    assert fake_es.count() == 0


def test_timeout_is_retried(fake_es: FakeElasticsearch) -> None:
    dest = destination(fake_es, request_timeout_seconds=0.2)
    dest.prepare()
    fake_es.set_faults(delay_seconds=0.6, requests=1)
    outcome = dest.send([entry(1, request_doc(1))])
    assert outcome.retry == [1]


def test_per_item_429_retries_only_those_items(fake_es: FakeElasticsearch) -> None:
    dest = destination(fake_es)
    dest.prepare()
    fake_es.set_faults(item_status=429, item_every=2, items=2)
    outcome = dest.send([entry(i, request_doc(i)) for i in range(1, 5)])
    assert sorted(outcome.acked) == [2, 4] and sorted(outcome.retry) == [1, 3]


def test_mapping_error_goes_to_dead_letter_others_delivered(fake_es: FakeElasticsearch, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "es.sqlite3", max_bytes=10**9)
    bad = {"@timestamp": "2026-11-23T00:00:00Z", "request_id": "bad", "prompt_length": "not a number"}
    spool.append([SpoolRecord(REQUEST, REQUESTS, "good-1", json.dumps(request_doc(1)).encode()),
                  SpoolRecord(REQUEST, REQUESTS, "bad", json.dumps(bad).encode()),
                  SpoolRecord(REQUEST, REQUESTS, "good-2", json.dumps(request_doc(2)).encode())])
    dead_letters = DeadLetterFile(tmp_path / "dead.ndjson")
    drainer = SpoolDrainer(destination(fake_es), spool, dead_letters, 100, Backoff(0.01, 0.02))
    assert drainer.drain_once()
    assert spool.depth_documents == 0
    assert set(fake_es.documents(REQUESTS)) == {"good-1", "good-2"}
    lines = [json.loads(line) for line in dead_letters.path.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["id"] == "bad"
    assert "prompt_length" in lines[0]["reason"] and "400" in lines[0]["reason"]
    assert lines[0]["document"]["request_id"] == "bad"
    assert drainer.dead_lettered_documents == 1 and drainer.sent_documents == 2


def test_time_series_mode_omits_metric_ids_and_sets_index_mode(fake_es: FakeElasticsearch) -> None:
    dest = destination(fake_es, metrics_time_series_mode=True)
    dest.prepare()
    settings = fake_es.templates["dsagent-metrics"]["template"]["settings"]
    assert settings["index.mode"] == "time_series"
    body = dest.bulk_body([SpoolEntry(1, METRIC, "metrics-dsagent.gpu-default", "abc", b"{}"),
                           entry(2, request_doc(2))])
    actions = [json.loads(line) for line in body.splitlines()[::2]]
    assert "_id" not in actions[0]["create"] and actions[1]["create"]["_id"] == "id-2"


def test_api_key_and_basic_auth_are_sent(fake_es: FakeElasticsearch) -> None:
    dest = destination(fake_es, api_key="a2V5OnNlY3JldA==")
    dest.prepare()
    assert fake_es.last_headers["authorization"] == "ApiKey a2V5OnNlY3JldA=="
    dest = destination(fake_es, username="elastic", password="changeme")
    dest.prepare()
    assert fake_es.last_headers["authorization"].startswith("Basic ")


def test_stream_names_follow_prefix_and_namespace(fake_es: FakeElasticsearch) -> None:
    from dsagent.export.documents import Document

    dest = destination(fake_es, index_prefix="gpufleet", namespace="prod")
    doc = Document(METRIC, "metrics", "gpu", "x", {})
    assert dest.stream_name(doc) == "metrics-gpufleet.gpu-prod"


def test_whole_request_413_is_split_until_the_oversized_document_is_isolated(
    fake_es: FakeElasticsearch, tmp_path: Path
) -> None:
    dest = destination(fake_es)
    dest.prepare()
    fake_es.set_faults(status=413, requests=3)  # the first three bulk requests are "too large"
    outcome = dest.send([entry(i, request_doc(i)) for i in range(1, 5)])
    # 4 -> 413; [1,2] -> 413; [1] -> 413 (dead); [2] ok; [3,4] ok
    assert [e.seq for e, _ in outcome.dead] == [1] and "413" in outcome.dead[0][1]
    assert sorted(outcome.acked) == [2, 3, 4] and not outcome.retry
