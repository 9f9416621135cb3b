"""Issue 12 item 9: prompt and completion text under any attribute name of the OpenTelemetry GenAI and
OpenInference families never reaches NDJSON, Elasticsearch, OTLP or the dead-letter files."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dsagent.export.config import ElasticsearchConfig, ExportConfig, OtlpExportConfig
from dsagent.export.elasticsearch import ElasticsearchDestination
from dsagent.export.ndjson import NdjsonDestination
from dsagent.export.otlp import OtlpDestination
from dsagent.export.pipeline import TelemetryPipeline
from dsagent.samples import RequestRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.elasticsearch import FakeElasticsearch

FAMILIES = [
    "gen_ai.prompt.{i}.content", "gen_ai.completion.{i}.content", "gen_ai.prompt", "gen_ai.completion",
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt.{i}.role",
    "llm.prompts", "llm.prompts.{i}", "llm.input_messages.{i}.message.content", "llm.output_messages.{i}.message.content",
    "llm.prompt_template.template", "input.value", "output.value", "http.request.body", "http.response.body",
    "body.content", "gen_ai.tool.call.arguments", "my.vendor.{i}.content", "x_{i}_unknown_family",
]


class Captured:
    """An OTLP collector that answers 400 to every other POST (those go to the dead-letter file)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.bodies.append(request.content)
        return httpx.Response(400 if self.calls % 2 else 200, text="no")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TelemetryPipeline, Path, Captured, FakeElasticsearch]]:
    root = tmp_path_factory.mktemp("redaction")
    captured = Captured()
    with FakeElasticsearch() as cluster:
        config = ExportConfig.model_validate({"spool": {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.02}})
        destinations = [
            NdjsonDestination(root / "export", 10**9, 2),
            OtlpDestination(OtlpExportConfig.model_validate({"endpoint": "http://collector:4318"}),
                            transport=httpx.MockTransport(captured)),
            ElasticsearchDestination(ElasticsearchConfig.model_validate({"url": cluster.url})),
        ]
        telemetry = TelemetryPipeline(config, root, {"host.name": "n"}, destinations=destinations)
        telemetry.start(collect_periodically=False)
        try:
            yield telemetry, root, captured, cluster
        finally:
            telemetry.shutdown()


def everything_written(root: Path, captured: Captured, cluster: FakeElasticsearch) -> str:
    texts = [path.read_text(errors="replace") for path in root.rglob("*.ndjson")]
    for path in (root / "dead-letter").glob("*.ndjson"):
        for line in path.read_text().splitlines():
            entry: dict[str, Any] = json.loads(line)
            if "payload_base64" in entry:
                texts.append(base64.b64decode(entry["payload_base64"]).decode(errors="replace"))
    texts += [body.decode(errors="replace") for body in captured.bodies]
    texts.append(json.dumps(cluster.documents()))
    return "\n".join(texts)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(st.sampled_from(FAMILIES), min_size=1, max_size=4),
    index=st.integers(min_value=0, max_value=20),
    nested=st.booleans(),
    marker=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=12, max_size=20),
)
def test_text_under_any_family_name_reaches_no_output(
        outputs: tuple[TelemetryPipeline, Path, Captured, FakeElasticsearch],
        names: list[str], index: int, nested: bool, marker: str) -> None:
    telemetry, root, captured, cluster = outputs
    secret = f"SECRET{marker}"
    attributes: dict[str, Any] = {}
    for name in names:
        value: Any = f"{secret} said the user"
        attributes[name.format(i=index)] = {"role": "user", "content": value} if nested else value
    attributes["gen_ai.request.model"] = "demo"  # allowlisted: kept
    telemetry.record_requests([RequestRecord(f"req-{marker}", time.time(), model="demo", attributes=attributes)])
    assert telemetry.force_flush(10)
    written = everything_written(root, captured, cluster)
    assert f"req-{marker}" in written  # the record itself went out everywhere
    assert secret not in written
