"""The fake Elasticsearch behaves like the real protocol where our exporter depends on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from elasticsearch import ApiError, Elasticsearch, helpers

from tests.fakes.elasticsearch import FakeElasticsearch, apply_filter_path

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_client_accepts_it_and_sees_the_product_header(fake_es: FakeElasticsearch) -> None:
    info = Elasticsearch(fake_es.url).info()
    assert info["version"]["number"].startswith("9.")


def test_the_8x_client_works_with_8x_and_9x_clusters() -> None:
    """elasticsearch-py 8 sends compatible-with=8, which 8.x and 9.x servers both accept."""
    for version in ("8.17.0", "9.1.0"):
        with FakeElasticsearch(version=version) as cluster:
            assert Elasticsearch(cluster.url).info()["version"]["number"] == version


def test_a_client_newer_than_the_server_is_refused_like_a_real_cluster() -> None:
    with FakeElasticsearch(version="7.17.0") as old_cluster:
        with pytest.raises(ApiError, match="media_type_header_exception"):
            Elasticsearch(old_cluster.url).info()


def test_helpers_bulk_create_conflict_search_and_count(fake_es: FakeElasticsearch) -> None:
    client = Elasticsearch(fake_es.url)
    client.indices.put_index_template(name="t", index_patterns=["logs-x-*"], data_stream={}, priority=200,
                                      template={"mappings": {"properties": {"n": {"type": "long"}}}})
    actions = [{"_op_type": "create", "_index": "logs-x-default", "_id": f"d{i}",
                "_source": {"@timestamp": "2026-11-23T00:00:00Z", "n": i, "tag": "even" if i % 2 == 0 else "odd"}}
               for i in range(10)]
    assert helpers.bulk(client, actions)[0] == 10
    ok, errors = helpers.bulk(client, actions[:2], raise_on_error=False)
    assert ok == 0 and all(next(iter(e.values()))["status"] == 409 for e in errors)
    assert client.count(index="logs-x-*")["count"] == 10
    hits = client.search(index="logs-x-default", query={"term": {"tag": "even"}}, size=100)["hits"]
    assert hits["total"]["value"] == 5
    assert client.indices.get_data_stream(name="logs-x-default")["data_streams"][0]["name"] == "logs-x-default"
    bad = client.bulk(operations=[{"create": {"_index": "logs-x-default", "_id": "bad"}},
                                  {"@timestamp": "2026-11-23T00:00:00Z", "n": "many"}])
    assert bad["errors"] and bad["items"][0]["create"]["status"] == 400


def test_index_op_into_a_data_stream_is_refused(fake_es: FakeElasticsearch) -> None:
    client = Elasticsearch(fake_es.url)
    client.indices.put_index_template(name="t", index_patterns=["logs-y-*"], data_stream={})
    result = client.bulk(operations=[{"index": {"_index": "logs-y-a"}}, {"@timestamp": "2026-11-23T00:00:00Z"}])
    assert result["items"][0]["index"]["status"] == 400


def test_filter_path_keeps_only_the_named_paths() -> None:
    response = {"took": 3, "errors": True, "items": [
        {"create": {"_id": "1", "status": 201, "_shards": {}}},
        {"create": {"_id": "2", "status": 400, "error": {"type": "t", "reason": "r", "caused_by": {}}}}]}
    assert apply_filter_path(response, "errors,items.*.status,items.*.error.type") == {
        "errors": True, "items": [{"create": {"status": 201}}, {"create": {"status": 400, "error": {"type": "t"}}}]}


def test_runs_as_a_separate_process() -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.fakes.elasticsearch", "--port", "0"],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        assert Elasticsearch(url).info()["tagline"] == "You Know, for Search"
        client = Elasticsearch(url, max_retries=0)
        client.perform_request("POST", "/_fake/faults", body={"status": 503, "requests": 1},
                               headers={"content-type": "application/json"})
        with pytest.raises(ApiError):
            client.bulk(operations=[{"create": {"_index": "i", "_id": "1"}}, {"a": 1}])
    finally:
        process.terminate()
        process.wait(10)
