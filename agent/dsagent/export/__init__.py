"""Export pipeline: OpenTelemetry SDK -> durable SQLite spool per destination -> Elasticsearch / NDJSON / OTLP.

The agent runtime uses `TelemetryPipeline` and the config models; everything else is internal.
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
