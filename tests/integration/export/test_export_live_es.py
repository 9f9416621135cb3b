"""The Elasticsearch exporter against a real cluster named by DSAGENT_TEST_ES_URL (skipped without one).

Optional: DSAGENT_TEST_ES_API_KEY, or DSAGENT_TEST_ES_USERNAME / DSAGENT_TEST_ES_PASSWORD, and
DSAGENT_TEST_ES_CA_CERTS. Writes into a unique namespace and deletes its data streams afterwards.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from dsagent.export.config import ExportConfig
from dsagent.export.elasticsearch import build_client
from dsagent.export.pipeline import TelemetryPipeline
from dsagent.samples import RequestRecord, Sample, make_labels

ES_URL = os.environ.get("DSAGENT_TEST_ES_URL")

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not ES_URL, reason="DSAGENT_TEST_ES_URL is not set: no real Elasticsearch to test against"),
]


def test_pipeline_writes_data_streams_exactly_once_into_a_real_cluster(tmp_path: Path) -> None:
    namespace = f"test{uuid.uuid4().hex[:8]}"
    es_settings: dict[str, object] = {"url": ES_URL, "namespace": namespace}
    for key, env in (("api_key", "API_KEY"), ("username", "USERNAME"), ("password", "PASSWORD"),
                     ("ca_certs", "CA_CERTS")):
        if os.environ.get(f"DSAGENT_TEST_ES_{env}"):
            es_settings[key] = os.environ[f"DSAGENT_TEST_ES_{env}"]
    config = ExportConfig.model_validate({"elasticsearch": es_settings, "file": {"enabled": False}})
    assert config.elasticsearch is not None
    client = build_client(config.elasticsearch)
    pipeline = TelemetryPipeline(config, tmp_path, {"host.name": "live-test"})
    pipeline.start()
    try:
        now = time.time()
        pipeline.record_samples([Sample("dsagent_gpu_utilization_ratio", make_labels({"gpu_index": "0"}), 0.4, now)])
        pipeline.record_requests([RequestRecord(f"live-{i}", now, model="demo", prompt_length=4,
                                                generation_time_seconds=0.2) for i in range(5)])
        assert pipeline.force_flush(60)
        # replay the same documents: create with the same ids must not duplicate them
        pipeline.record_requests([RequestRecord(f"live-{i}", now, model="demo", prompt_length=4,
                                                generation_time_seconds=0.2) for i in range(5)])
        assert pipeline.force_flush(60)
        assert pipeline.stats()["dead_lettered_documents"] == 0
        client.indices.refresh(index=f"logs-dsagent.requests-{namespace}")
        assert client.count(index=f"logs-dsagent.requests-{namespace}")["count"] == 5
        client.indices.refresh(index=f"metrics-dsagent.gpu-{namespace}")
        assert client.count(index=f"metrics-dsagent.gpu-{namespace}")["count"] == 1
    finally:
        pipeline.shutdown()
        client.indices.delete_data_stream(name=f"*-dsagent.*-{namespace}", expand_wildcards="all")
