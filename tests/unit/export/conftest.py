"""Fixtures for the export tests: an in-process fake Elasticsearch on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.elasticsearch import FakeElasticsearch


@pytest.fixture()
def fake_es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch() as cluster:
        yield cluster
