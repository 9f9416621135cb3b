"""The metrics the agent itself derives (beyond what sources report), as data: name, type, unit, meaning.

Why: HPA/KEDA rules and dashboards are written against these names, so they are documented in one place
and a test checks that everything the agent emits about itself is listed here (sources keep their own
table in dsagent.sources.metric_metadata).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentMetric:
    name: str
    kind: str  # gauge | counter | histogram
    unit: str
    description: str


AGENT_METRICS: tuple[AgentMetric, ...] = (
    AgentMetric("inference_qps", "gauge", "requests/s",
                "finished requests per second over server.slo_window_seconds (scale on this)"),
    AgentMetric("inference_output_tokens_per_second", "gauge", "tokens/s", "generated tokens per second over the window"),
    AgentMetric("inference_requests_total", "counter", "requests", "finished requests, label finish_reason"),
    AgentMetric("inference_latency_seconds", "histogram", "seconds", "end-to-end request duration (explicit buckets)"),
    AgentMetric("inference_ttft_seconds", "histogram", "seconds", "time to first token (explicit buckets)"),
    AgentMetric("inference_latency_p50_seconds", "gauge", "seconds", "median latency over the window; absent without requests"),
    AgentMetric("inference_latency_p99_seconds", "gauge", "seconds", "p99 latency over the window; absent without requests"),
    AgentMetric("inference_ttft_p50_seconds", "gauge", "seconds", "median TTFT over the window; absent without requests"),
    AgentMetric("inference_ttft_p99_seconds", "gauge", "seconds", "p99 TTFT over the window; absent without requests"),
    AgentMetric("inference_tpot_p50_seconds", "gauge", "seconds", "median time per output token over the window"),
    AgentMetric("dsagent_up", "gauge", "", "1 while the agent's collection job runs"),
    AgentMetric("dsagent_engine_ready", "gauge", "", "1 when the supervised/observed engine answers /readyz; label engine_kind"),
    AgentMetric("dsagent_engine_restarts_total", "counter", "restarts", "engine restarts by the supervisor"),
    AgentMetric("dsagent_engine_consecutive_failures", "gauge", "", "failed starts/crashes in a row (resets after a stable run)"),
    AgentMetric("dsagent_engine_crash_loop", "gauge", "", "1 when the supervisor gave up after supervisor.crash_loop_limit"),
    AgentMetric("dsagent_export_spool_depth_documents", "gauge", "documents",
                "documents waiting in the durable spool; label destination (all = sum)"),
    AgentMetric("dsagent_export_spool_bytes", "gauge", "bytes", "documents' bytes in the spool (the quota's measure)"),
    AgentMetric("dsagent_export_spool_disk_bytes", "gauge", "bytes",
                "the spool's database plus write-ahead log on disk; label destination"),
    AgentMetric("dsagent_export_sent_documents_total", "counter", "documents", "acknowledged by the destination"),
    AgentMetric("dsagent_export_dropped_documents_total", "counter", "documents",
                "metric documents dropped past the spool quota (never requests/actions)"),
    AgentMetric("dsagent_export_dead_lettered_documents_total", "counter", "documents",
                "rejected by the destination (mapping errors) and written to the dead-letter file"),
    AgentMetric("dsagent_export_retries_total", "counter", "retries", "send retries (429/5xx/timeouts)"),
    AgentMetric("dsagent_actions_total", "counter", "decisions",
                "Decisions by action and outcome (applied, skipped, dry_run, failed, rolled_back, verified)"),
    AgentMetric("dsagent_actions_pending_verify", "gauge", "decisions",
                "applied changes waiting for their verify-after-apply settle time"),
    AgentMetric("dsagent_export_failed_exports_total", "counter", "exports", "SDK exports that could not be spooled"),
    AgentMetric("dsagent_source_last_success_age_seconds", "gauge", "seconds",
                "age of each source's last good reading; label source (/readyz goes red past the bound)"),
    AgentMetric("dsagent_export_refused_retries_total", "counter", "retries",
                "sends the destination refused for a reason an operator must fix (401/403/404), retried"),
    AgentMetric("dsagent_export_moved_aside_documents_total", "counter", "documents",
                "documents stuck at the head of the queue moved to its tail so later ones are not blocked"),
    AgentMetric("dsagent_export_over_quota_appends_total", "counter", "appends",
                "appends that left the spool over its quota (requests/actions are never dropped)"),
    AgentMetric("dsagent_export_unspooled_records_dropped_total", "counter", "records",
                "log records dropped from memory while the spools kept failing (bounded pending list)"),
    AgentMetric("dsagent_rules_loaded", "gauge", "rules", "rules the rule manager evaluates (dsagent.rules)"),
    AgentMetric("dsagent_rules_reloads_total", "counter", "reloads",
                "rule-file (re)loads by result (success, failure: the previous rules kept running)"),
    AgentMetric("dsagent_rule_evaluation_failures_total", "counter", "evaluations",
                "rule evaluations that failed (the rule's last error is in dsagent status); label group"),
    AgentMetric("dsagent_rule_group_last_duration_seconds", "gauge", "seconds",
                "how long the group's last evaluation took; label group"),
    AgentMetric("dsagent_rule_alerts", "gauge", "alerts", "alert instances by state (pending, firing)"),
)

AGENT_METRICS_BY_NAME = {metric.name: metric for metric in AGENT_METRICS}


def family_name(sample_name: str) -> str:
    """inference_latency_seconds_bucket -> inference_latency_seconds (histogram parts map to their family)."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample_name[: -len(suffix)] if sample_name.endswith(suffix) else None
        if base and base in AGENT_METRICS_BY_NAME and AGENT_METRICS_BY_NAME[base].kind == "histogram":
            return base
    return sample_name
