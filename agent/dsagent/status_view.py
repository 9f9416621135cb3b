"""Renders the running agent's /api/status JSON as rich tables for `dsagent status`.

Why separate from the CLI: the rendering is a pure function of a dict, so it is tested without an agent,
and a value the agent could not read (None) shows as "-" instead of a misleading 0.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table


def _fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value * scale:.{digits}f}{unit}"
    return str(value)


def _fmt_bytes(value: Any) -> str:
    if value is None:
        return "-"
    return f"{float(value) / 2**30:.2f} GiB"


def render_status(status: dict[str, Any]) -> Group:
    """Engine, GPUs, SLO signals, export, recent actions: one table each."""
    agent = status.get("agent", {})
    engine = status.get("engine", {})
    slo = status.get("slo", {})
    gpus = status.get("gpus", {})
    export = status.get("export", {})
    actions = status.get("actions", [])

    engine_table = Table(title=f"Engine ({engine.get('kind', '?')} at {engine.get('url', '?')})", title_justify="left")
    for column in ("state", "restarts", "running", "waiting", "KV cache", "pid", "detail"):
        engine_table.add_column(column)
    engine_table.add_row(
        str(engine.get("state", "?")),
        str(engine.get("restarts_total", "-")),
        _fmt(engine.get("requests_running"), digits=0),
        _fmt(engine.get("requests_waiting"), digits=0),
        _fmt(engine.get("kv_cache_usage_ratio"), "%", 100.0, 1),
        str(engine.get("pid") or "-"),
        str(engine.get("reason") or ""),
    )

    gpu_table = Table(title="GPUs", title_justify="left")
    devices = gpus.get("devices") or []
    if devices:
        for column in ("index", "name", "util", "memory used / total", "temp", "power"):
            gpu_table.add_column(column)
        for device in devices:
            gpu_table.add_row(
                str(device.get("index", "?")),
                str(device.get("name") or "-"),
                _fmt(device.get("utilization_ratio"), "%", 100.0, 0),
                f"{_fmt_bytes(device.get('memory_used_bytes'))} / {_fmt_bytes(device.get('memory_total_bytes'))}",
                _fmt(device.get("temperature_celsius"), " C", digits=0),
                _fmt(device.get("power_draw_watts"), " W", digits=0),
            )
    else:
        gpu_table.add_column("GPU")
        gpu_table.add_row(f"no GPU: {gpus.get('none_reason') or 'unknown reason'}")

    slo_table = Table(title=f"SLO signals (last {_fmt(slo.get('window_seconds'), ' s', digits=0)})",
                      title_justify="left")
    for column in ("qps", "p50 latency", "p99 latency", "p50 TTFT", "p99 TTFT", "tokens/s", "requests"):
        slo_table.add_column(column)
    slo_table.add_row(
        _fmt(slo.get("qps")),
        _fmt(slo.get("latency_p50_seconds"), " s", digits=3),
        _fmt(slo.get("latency_p99_seconds"), " s", digits=3),
        _fmt(slo.get("ttft_p50_seconds"), " s", digits=3),
        _fmt(slo.get("ttft_p99_seconds"), " s", digits=3),
        _fmt(slo.get("output_tokens_per_second"), digits=1),
        str(slo.get("requests_total", 0)),
    )

    export_table = Table(title=f"Telemetry -> {agent.get('telemetry_destinations', '?')}", title_justify="left")
    export_table.add_column("counter")
    export_table.add_column("value", justify="right")
    for key, value in sorted(export.items()):
        export_table.add_row(str(key), _fmt(value, digits=0) if isinstance(value, int | float) else str(value))

    actions_table = Table(title="Recent actions", title_justify="left")
    for column in ("time", "rule", "knob", "old -> new", "outcome", "reason"):
        actions_table.add_column(column)
    if not actions:
        actions_table.add_row("-", "(none yet)", "", "", "", "")
    for action in actions:
        actions_table.add_row(
            str(action.get("timestamp", "")), str(action.get("rule", "")), str(action.get("knob", "")),
            f"{action.get('old', '')} -> {action.get('new', '')}", str(action.get("outcome", "")),
            str(action.get("reason", "")),
        )

    header = Table.grid()
    header.add_row(f"dsagent {agent.get('version', '?')} pid {agent.get('pid', '?')} - API {agent.get('api_url', '?')}"
                   f" - up {_fmt(agent.get('uptime_seconds'), ' s', digits=0)} - data {agent.get('data_dir', '?')}")
    readiness = agent.get("readiness") or {}
    if readiness.get("stale"):
        header.add_row("[bold red]NOT READY[/]: " + "; ".join(str(reason) for reason in readiness["stale"]))
    return Group(header, engine_table, gpu_table, slo_table, export_table, actions_table,
                 *render_rules(status.get("rules")))


def _action_text(action: Any) -> str:
    if isinstance(action, dict) and action:
        kind = next((k for k in action if k not in ("cooldown_seconds", "dry_run", "verify", "on")), "?")
        options = action.get(kind)
        text = kind + (" " + ", ".join(f"{k}={v}" for k, v in options.items()) if isinstance(options, dict) and options
                       else "")
        return text + (f" (on {action['on']})" if action.get("on") else "")
    return str(action)


def render_rules(rules: dict[str, Any] | None) -> list[Any]:
    """The rules table: each rule's state (pending with the time left), last error, what firing would do."""
    if not rules:
        return []
    title = f"Rules ({len(rules.get('files') or [])} files{', dry-run' if rules.get('dry_run') else ''})"
    table = Table(title=title, title_justify="left")
    for column in ("group", "rule", "state", "last eval", "would do / error"):
        table.add_column(column)
    for group in rules.get("groups") or []:
        for rule in group.get("rules") or []:
            state = rule.get("state") or ("recording" if rule.get("type") == "recording" else "-")
            if state == "pending" and rule.get("pending_seconds_left") is not None:
                state = f"pending ({rule['pending_seconds_left']:.0f} s left)"
            elif state == "firing":
                state = f"[bold red]firing[/] x{rule.get('firing', 1)}"
            detail = f"[red]{rule['last_error']}[/]" if rule.get("last_error") else \
                "; ".join(_action_text(a) for a in rule.get("actions") or [])
            last = rule.get("last_evaluation_seconds")
            table.add_row(str(group.get("name", "")) + ("" if group.get("enabled", True) else " (off)"),
                          str(rule.get("name", "")), state, "-" if last is None else f"{last:.0f}", detail)
    out: list[Any] = [table]
    if rules.get("last_reload_error"):
        out.append(f"[bold red]rule reload refused[/] (previous rules keep running): {rules['last_reload_error']}")
    return out
