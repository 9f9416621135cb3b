"""The data views and the four dashboards, as Kibana saved objects built on the agent's own field names.

Every field a panel reads is declared by the agent's index templates (`dsagent.export.es_templates`), and
every metric name a panel filters on is in the metric metadata tables (`dsagent.sources.metric_metadata`,
`dsagent.agent_metrics`, the GenAI names in `dsagent.export.instruments`); tests/unit/dashboards proves
both. A panel for a field the agent does not write yet is left out, not invented.

Data streams (index prefix `dsagent`, any namespace): `metrics-dsagent.<dataset>-<ns>` hold one document
per metric point (`metric.name`, `labels.*`, `value` or `histogram`, `host.name`);
`logs-dsagent.requests-<ns>` one per finished request; `logs-dsagent.actions-<ns>` one per decision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dsagent.dashboards.lens import (
    Column,
    LensPanel,
    SearchPanel,
    count,
    histogram_buckets,
    metric,
    metric_filter,
    pie_panel,
    ratio_formula,
    static_value,
    table_panel,
    terms,
    xy_panel,
)

#: Saved-object format versions: the objects are in the form Kibana 8.9+ writes; Kibana migrates them up
#: on import (8.x and 9.x). Without these Kibana would run every migration since 7.0 on them.
CORE_MIGRATION_VERSION = "8.8.0"
TYPE_MIGRATION_VERSIONS = {"index-pattern": "8.0.0", "dashboard": "8.9.0", "search": "8.0.0"}

METRICS_VIEW = "dsagent-metrics"
REQUESTS_VIEW = "dsagent-requests"
ACTIONS_VIEW = "dsagent-actions"

#: data view id -> (index pattern, name shown in Kibana)
DATA_VIEWS: dict[str, tuple[str, str]] = {
    METRICS_VIEW: ("metrics-dsagent.*", "dsagent metrics"),
    REQUESTS_VIEW: ("logs-dsagent.requests-*", "dsagent requests"),
    ACTIONS_VIEW: ("logs-dsagent.actions-*", "dsagent actions"),
}

#: The latency SLO drawn as a reference line (the operator guides' `avg(inference_latency) > 1.5`).
LATENCY_SLO_SECONDS = 1.5

HOST = "host.name"
GPU_SERIES: tuple[str, ...] = ("labels.gpu_index",)


@dataclass
class Dashboard:
    dashboard_id: str
    title: str
    description: str
    panels: list[LensPanel | SearchPanel] = field(default_factory=list)


def _per_host(order_by: str | None = "y0") -> Column:
    return terms(HOST, "Host", size=20, order_by=order_by)


def _per_gpu(order_by: str = "y0") -> Column:
    return terms(HOST, "Host / GPU", size=32, order_by=order_by, secondary_fields=GPU_SERIES)


def _gauge(metric_name: str, label: str, unit: str | None = None, operation: str = "average") -> dict[str, Column]:
    return {"y0": metric(operation, "value", label, metric_filter(metric_name), unit)}


# ---- Fleet overview ---------------------------------------------------------------------------------------


def fleet_overview() -> Dashboard:
    d = "dsagent-fleet-overview"
    board = Dashboard(d, "[dsagent] Fleet overview",
                      "Throughput, latency against the SLO, TTFT, output tokens/s and errors, per host.")
    board.panels += [
        xy_panel(d, "qps", "Requests per second (inference_qps) per host", (0, 0, 24, 12), METRICS_VIEW,
                 _gauge("inference_qps", "Requests/s"), split=_per_host()),
        xy_panel(d, "latency", "Request latency p50 / p99 vs SLO", (24, 0, 24, 12), REQUESTS_VIEW,
                 {"y0": metric("percentile", "generation_time_seconds", "p50 latency", unit="s", percentile=50),
                  "y1": metric("percentile", "generation_time_seconds", "p99 latency", unit="s", percentile=99)},
                 reference_lines={"slo": static_value(LATENCY_SLO_SECONDS, f"SLO {LATENCY_SLO_SECONDS:g} s")},
                 description="From the request log; the dashed line is the latency SLO (edit it to yours)."),
        xy_panel(d, "ttft", "Time to first token p99 per host", (0, 12, 24, 12), METRICS_VIEW,
                 _gauge("inference_ttft_p99_seconds", "TTFT p99", "s"), split=_per_host()),
        xy_panel(d, "tokens", "Output tokens per second per host", (24, 12, 24, 12), METRICS_VIEW,
                 _gauge("inference_output_tokens_per_second", "Output tokens/s"), split=_per_host()),
        xy_panel(d, "errors", "Error rate (HTTP status >= 400) per host", (0, 24, 24, 12), REQUESTS_VIEW,
                 ratio_formula("y0", "Error rate", count("errors", "status_code >= 400"), count("requests"),
                               "count(kql='status_code >= 400') / count()", unit=None),
                 split=_per_host(order_by=None)),
        xy_panel(d, "queue", "Requests running and waiting per host", (24, 24, 24, 12), METRICS_VIEW,
                 {"y0": metric("average", "value", "Running", metric_filter("dsagent_engine_requests_running")),
                  "y1": metric("average", "value", "Waiting", metric_filter("dsagent_engine_requests_waiting"))},
                 split=_per_host()),
    ]
    return board


# ---- GPU -----------------------------------------------------------------------------------------------------


def gpu() -> Dashboard:
    d = "dsagent-gpu"
    board = Dashboard(d, "[dsagent] GPU",
                      "Per GPU (host / index): utilization, memory, temperature, power, clocks, throttling, "
                      "XID errors and energy per output token.")
    energy_text = ("sum(value, kql='metric.name : \"dsagent_gpu_power_draw_watts\"') / "
                   "sum(value, kql='metric.name : \"inference_output_tokens_per_second\"')")
    board.panels += [
        xy_panel(d, "utilization", "GPU utilization", (0, 0, 24, 12), METRICS_VIEW,
                 _gauge("dsagent_gpu_utilization_ratio", "Utilization (0-1)"), split=_per_gpu()),
        xy_panel(d, "memory", "GPU memory used", (24, 0, 24, 12), METRICS_VIEW,
                 _gauge("dsagent_gpu_memory_used_bytes", "Memory used", "bytes"), split=_per_gpu()),
        xy_panel(d, "temperature", "GPU temperature", (0, 12, 16, 12), METRICS_VIEW,
                 _gauge("dsagent_gpu_temperature_celsius", "Temperature", "°C"), split=_per_gpu()),
        xy_panel(d, "power", "GPU power draw", (16, 12, 16, 12), METRICS_VIEW,
                 _gauge("dsagent_gpu_power_draw_watts", "Power", "W"), split=_per_gpu()),
        xy_panel(d, "energy", "Energy per output token (J/token) per host", (32, 12, 16, 12), METRICS_VIEW,
                 ratio_formula("y0", "Joules per output token",
                               metric("sum", "value", "power", metric_filter("dsagent_gpu_power_draw_watts")),
                               metric("sum", "value", "tokens/s",
                                      metric_filter("inference_output_tokens_per_second")),
                               energy_text, unit="J"),
                 split=_per_host(order_by=None),
                 description="Board power of all GPUs divided by generated tokens per second, per host."),
        xy_panel(d, "sm-clock", "SM clock", (0, 24, 24, 12), METRICS_VIEW,
                 _gauge("dsagent_gpu_sm_clock_hertz", "SM clock", "Hz"), split=_per_gpu()),
        xy_panel(d, "memory-clock", "Memory clock", (24, 24, 24, 12), METRICS_VIEW,
                 _gauge("dsagent_gpu_memory_clock_hertz", "Memory clock", "Hz"), split=_per_gpu()),
        xy_panel(d, "throttle", "Clock throttle reasons active", (0, 36, 24, 12), METRICS_VIEW,
                 _gauge("dsagent_gpu_clock_throttle_active", "Active (1)", operation="max"),
                 split=terms("labels.reason", "Reason", size=16, order_by="y0"), series_type="bar_stacked"),
        xy_panel(d, "xid", "XID errors (count since the agent started)", (24, 36, 24, 12), METRICS_VIEW,
                 _gauge("dsagent_gpu_xid_errors_total", "XID errors", operation="max"), split=_per_gpu()),
    ]
    return board


# ---- Requests ---------------------------------------------------------------------------------------------


def requests() -> Dashboard:
    d = "dsagent-requests"
    board = Dashboard(d, "[dsagent] Requests",
                      "Per-request records: latency and length distributions, finish reasons, slowest requests.")
    board.panels += [
        xy_panel(d, "latency-histogram", "Request latency distribution", (0, 0, 24, 12), REQUESTS_VIEW,
                 {"y0": count("Requests")}, x=histogram_buckets("generation_time_seconds", "Latency (s)"),
                 series_type="bar"),
        xy_panel(d, "prompt-length", "Prompt length (tokens)", (24, 0, 12, 12), REQUESTS_VIEW,
                 {"y0": count("Requests")}, x=histogram_buckets("prompt_length", "Prompt tokens"),
                 series_type="bar"),
        xy_panel(d, "output-length", "Output length (tokens)", (36, 0, 12, 12), REQUESTS_VIEW,
                 {"y0": count("Requests")}, x=histogram_buckets("tokens_generated", "Output tokens"),
                 series_type="bar"),
        pie_panel(d, "finish-reasons", "Finish reasons", (0, 12, 16, 12), REQUESTS_VIEW,
                  terms("finish_reason", "Finish reason", size=10, order_by="value"), count("Requests")),
        xy_panel(d, "ttft", "Time to first token p50 / p99", (16, 12, 32, 12), REQUESTS_VIEW,
                 {"y0": metric("percentile", "time_to_first_token_seconds", "p50 TTFT", unit="s", percentile=50),
                  "y1": metric("percentile", "time_to_first_token_seconds", "p99 TTFT", unit="s", percentile=99)}),
        table_panel(d, "slowest", "Slowest requests", (0, 24, 48, 15), REQUESTS_VIEW,
                    {"request": terms("request_id", "Request id", size=25, order_by="latency"),
                     "model": terms("model", "Model", size=5, order_by="latency"),
                     "latency": metric("max", "generation_time_seconds", "Latency", unit="s"),
                     "ttft": metric("max", "time_to_first_token_seconds", "TTFT", unit="s"),
                     "prompt": metric("max", "prompt_length", "Prompt tokens"),
                     "output": metric("max", "tokens_generated", "Output tokens")},
                    sort_by="latency"),
    ]
    return board


# ---- Actions and tuning -------------------------------------------------------------------------------------

DECISIONS_SEARCH = "dsagent-actions-decisions"
DECISION_COLUMNS = ["rule", "action", "target", "old", "new", "outcome", "dry_run", "reason"]


def actions() -> Dashboard:
    d = "dsagent-actions"
    board = Dashboard(d, "[dsagent] Actions and tuning",
                      "Decisions the rules took (applied, skipped, rolled back) and the engine's knobs over time.")
    board.panels += [
        xy_panel(d, "decisions", "Decisions over time by outcome", (0, 0, 24, 12), ACTIONS_VIEW,
                 {"y0": count("Decisions")}, split=terms("outcome", "Outcome", size=10, order_by="y0"),
                 series_type="bar_stacked"),
        table_panel(d, "by-rule", "Decisions by rule, action and knob", (24, 0, 24, 12), ACTIONS_VIEW,
                    {"rule": terms("rule", "Rule", size=20, order_by="decisions"),
                     "action": terms("action", "Action", size=10, order_by="decisions"),
                     "knob": terms("knob", "Knob", size=20, order_by="decisions"),
                     "outcome": terms("outcome", "Outcome", size=10, order_by="decisions"),
                     "decisions": count("Decisions")},
                    sort_by="decisions"),
        xy_panel(d, "scale", "Scale events by outcome", (0, 12, 24, 12), ACTIONS_VIEW,
                 {"y0": count("Scale decisions", 'action : "scale"')},
                 split=terms("outcome", "Outcome", size=10, order_by="y0"), series_type="bar_stacked",
                 description="Replica changes the rules asked for (the decision log shows old and new counts)."),
        xy_panel(d, "knobs", "Engine knob values over time", (24, 12, 24, 12), METRICS_VIEW,
                 _gauge("dsagent_engine_knob_value", "Value"),
                 split=terms(HOST, "Host / knob", size=40, order_by="y0", secondary_fields=("labels.knob",))),
        xy_panel(d, "alerts", "Rule alerts pending and firing per host", (0, 24, 48, 10), METRICS_VIEW,
                 _gauge("dsagent_rule_alerts", "Alerts", operation="max"),
                 split=terms(HOST, "Host / state", size=40, order_by="y0", secondary_fields=("labels.state",)),
                 description="Alert instances of the loaded rule files by state (dsagent_rule_alerts)."),
        SearchPanel("decision-log", "Decision log (newest first)", (0, 34, 48, 15), DECISIONS_SEARCH),
    ]
    return board


def dashboards() -> list[Dashboard]:
    return [fleet_overview(), gpu(), requests(), actions()]


# ---- saved objects -------------------------------------------------------------------------------------------


def _versions(object_type: str) -> dict[str, Any]:
    return {"coreMigrationVersion": CORE_MIGRATION_VERSION,
            "typeMigrationVersion": TYPE_MIGRATION_VERSIONS[object_type]}


def data_view_objects() -> list[dict[str, Any]]:
    return [{
        "type": "index-pattern", "id": view_id, "managed": False, "references": [], **_versions("index-pattern"),
        "attributes": {"title": pattern, "name": name, "timeFieldName": "@timestamp", "allowNoIndex": True,
                       "fieldFormatMap": "{}", "fieldAttrs": "{}", "runtimeFieldMap": "{}", "sourceFilters": "[]",
                       "typeMeta": "{}", "fields": "[]"},
    } for view_id, (pattern, name) in DATA_VIEWS.items()]


def decisions_search_object() -> dict[str, Any]:
    source = {"query": {"query": "", "language": "kuery"}, "filter": [],
              "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index"}
    return {
        "type": "search", "id": DECISIONS_SEARCH, "managed": False, **_versions("search"),
        "attributes": {"title": "[dsagent] Decision log", "description": "Every decision with its outcome.",
                       "columns": DECISION_COLUMNS, "sort": [["@timestamp", "desc"]], "grid": {},
                       "hideChart": False, "isTextBasedQuery": False,
                       "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(source, sort_keys=True)}},
        "references": [{"name": "kibanaSavedObjectMeta.searchSourceJSON.index", "type": "index-pattern",
                        "id": ACTIONS_VIEW}],
    }


def dashboard_object(board: Dashboard) -> dict[str, Any]:
    from dsagent.dashboards.lens import LAYER_REFERENCE_PREFIX, stable_id

    panels: list[dict[str, Any]] = []
    references: list[dict[str, str]] = []
    for panel in board.panels:
        panel_index = stable_id(board.dashboard_id, panel.key)
        x, y, w, h = panel.grid
        entry: dict[str, Any] = {"panelIndex": panel_index, "gridData": {"x": x, "y": y, "w": w, "h": h,
                                                                           "i": panel_index},
                                 "title": panel.title}
        if isinstance(panel, LensPanel):
            entry.update(type="lens", embeddableConfig={"attributes": panel.attributes(), "enhancements": {}})
            for layer in panel.layers:
                references.append({"type": "index-pattern", "id": layer.data_view_id,
                                   "name": f"{panel_index}:{LAYER_REFERENCE_PREFIX}{layer.layer_id}"})
        else:
            entry.update(type="search", embeddableConfig={"enhancements": {}}, panelRefName=f"panel_{panel_index}")
            references.append({"type": "search", "id": panel.search_id, "name": f"{panel_index}:panel_{panel_index}"})
        panels.append(entry)
    search_source = {"query": {"query": "", "language": "kuery"}, "filter": []}
    return {
        "type": "dashboard", "id": board.dashboard_id, "managed": False, **_versions("dashboard"),
        "attributes": {
            "title": board.title,
            "description": board.description,
            "panelsJSON": json.dumps(panels, sort_keys=True, separators=(",", ":")),
            "optionsJSON": json.dumps({"useMargins": True, "syncColors": False, "syncCursor": True,
                                       "syncTooltips": False, "hidePanelTitles": False}, sort_keys=True),
            "timeRestore": True, "timeFrom": "now-1h", "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 30000},
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(search_source, sort_keys=True)},
        },
        "references": references,
    }


def saved_objects() -> list[dict[str, Any]]:
    """Everything to import, dependencies first: data views, the saved search, the dashboards."""
    return [*data_view_objects(), decisions_search_object(), *(dashboard_object(b) for b in dashboards())]
