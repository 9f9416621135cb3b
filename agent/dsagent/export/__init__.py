"""Export pipeline: OpenTelemetry SDK -> durable SQLite spool per destination -> Elasticsearch / NDJSON / OTLP.

The agent runtime uses `TelemetryPipeline` and the config models; everything else is internal.

Streams (Elasticsearch data streams `<type>-<index_prefix>.<dataset>-<namespace>`; NDJSON files
`<data_dir>/export/<type>-dsagent.<dataset>.ndjson`): metrics-*.gpu / .host / .engine / .agent (by metric
name prefix), metrics-*.requests (GenAI histograms), logs-*.requests, logs-*.actions.
On disk under `data_dir`: spool/<destination>.sqlite3, export/*.ndjson, dead-letter/<destination>.ndjson.
`TelemetryPipeline.stats()` keys: `<destination>.spool_depth_documents`, `.spool_bytes`, `.sent_documents`,
`.dropped_documents` (quota), `.dead_lettered_documents`, `.retries`, the same totals without prefix, and
`failed_exports`. Destinations are named `file`, `elasticsearch`, `otlp`.
"""

from dsagent.export.config import (
    ElasticsearchConfig,
    ExportConfig,
    FileExportConfig,
    OtlpExportConfig,
    RedactionConfig,
    SpoolConfig,
)
from dsagent.export.pipeline import TelemetryPipeline

__all__ = [
    "ElasticsearchConfig",
    "ExportConfig",
    "FileExportConfig",
    "OtlpExportConfig",
    "RedactionConfig",
    "SpoolConfig",
    "TelemetryPipeline",
]
