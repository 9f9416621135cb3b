"""Replay of the request records the agent stored in Elasticsearch (fake ES on loopback, the real client)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dsagent.loadgen.workload import WorkloadError, load_workload


def test_elasticsearch_request_records_replay(tmp_path: Path) -> None:
    """`elasticsearch:URL` reads the agent's logs-dsagent.requests documents (fake ES, real client)."""
    from dsagent.export.es_templates import requests_template
    from elasticsearch import Elasticsearch

    from tests.fakes.elasticsearch import FakeElasticsearch

    with FakeElasticsearch() as cluster:
        client = Elasticsearch(cluster.url)
        client.indices.put_index_template(name="logs-dsagent.requests", **requests_template("dsagent"))
        operations: list[dict[str, object]] = []
        for number, (prompt, output) in enumerate([(11, 4), (7, 6)]):
            operations += [{"create": {"_index": "logs-dsagent.requests-default", "_id": f"r{number}"}},
                           {"@timestamp": f"2026-01-01T00:00:0{number}Z", "request_id": f"r{number}",
                            "prompt_length": prompt, "tokens_generated": output}]
        client.bulk(operations=operations, refresh=True)
        client.close()
        profile = load_workload(f"elasticsearch:{cluster.url}")
    assert sorted(spec.max_tokens for spec in profile.generate(2)) == [4, 6]
    assert sorted(spec.prompt_words for spec in profile.generate(2)) == [7, 11]
    with pytest.raises(WorkloadError, match="no request records"):
        with FakeElasticsearch() as empty:
            load_workload(f"elasticsearch:{empty.url}#logs-dsagent.requests*")
