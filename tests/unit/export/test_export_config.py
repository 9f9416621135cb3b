"""Export config: the embedded default works without a file; bad values name the key."""

from __future__ import annotations

import pytest
from dsagent.export.config import ExportConfig
from pydantic import ValidationError


def test_embedded_default_is_files_only_with_latency_buckets() -> None:
    config = ExportConfig()
    assert config.elasticsearch is None and config.otlp is None
    assert config.file.enabled
    for bucket in (0.1, 0.5, 1.0, 2.0, 5.0):
        assert bucket in config.buckets.latency_seconds
    assert min(config.buckets.latency_seconds) < 0.1
    assert "prompt" in config.redaction.drop_fields and "completion" in config.redaction.drop_fields


def test_elasticsearch_url_without_scheme_is_rejected_naming_the_key() -> None:
    with pytest.raises(ValidationError, match=r"elasticsearch\.url[\s\S]*must start with http"):
        ExportConfig.model_validate({"elasticsearch": {"url": "localhost:9200"}})


def test_basic_auth_needs_both_parts() -> None:
    with pytest.raises(ValidationError, match="both username and password"):
        ExportConfig.model_validate({"elasticsearch": {"url": "http://x:9200", "username": "elastic"}})


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError, match="spool.max_byte"):
        ExportConfig.model_validate({"spool": {"max_byte": 5}})


def test_secrets_are_masked_when_dumped() -> None:
    config = ExportConfig.model_validate(
        {"elasticsearch": {"url": "https://es:9200", "api_key": "s3cret"}, "otlp": {
            "endpoint": "http://c:4318/", "headers": {"authorization": "Bearer t0k"}}}
    )
    dumped = config.model_dump_json()
    assert "s3cret" not in dumped and "t0k" not in dumped
    assert config.otlp is not None and config.otlp.endpoint == "http://c:4318"


def test_buckets_must_ascend() -> None:
    with pytest.raises(ValidationError, match="strictly ascending"):
        ExportConfig.model_validate({"buckets": {"latency_seconds": [0.5, 0.1]}})
