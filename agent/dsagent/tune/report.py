"""The tune report: plots (matplotlib, Agg), report.md, a self-contained report.html, trials.json and the
best profile as profile.yaml, all in the output directory.

Why these plots: "did the search converge" (objective per trial over time with the best-so-far line), "what
does the trade-off look like" (the Pareto front of throughput vs p99 latency, feasible trials only), "which
knob moves latency and throughput" (p99 vs throughput coloured by a knob) and "which knobs matter"
(optuna's PED-ANOVA parameter importances). The HTML embeds the PNGs so it can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from dsagent.tune.profile import Profile  # noqa: E402
from dsagent.tune.search import TuneSettings, best_trial, trial_records  # noqa: E402
from dsagent.tune.space import Dimension  # noqa: E402

PLOT_FILES = {
    "objective_over_time": "objective_over_time.png",
    "pareto_front": "pareto_front.png",
    "latency_vs_throughput": "latency_vs_throughput.png",
    "param_importances": "param_importances.png",
}


def pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indexes of points not dominated when maximizing x and minimizing y."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox >= x and oy <= y) and (ox > x or oy < y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _finish(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _empty(path: Path, title: str, message: str) -> None:
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    axes.set_title(title)
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    axes.set_axis_off()
    _finish(figure, path)


def plot_objective_over_time(records: list[dict[str, Any]], settings: TuneSettings, path: Path) -> None:
    name = settings.objective_names()[0]
    minimize = settings.directions()[0] == "minimize"
    done = [r for r in records if r["state"] in ("complete", "pruned") and r.get("repeat_of") is None]
    if not done:
        _empty(path, f"{name} per trial", "no finished trials")
        return
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    best: float | None = None
    best_x, best_y = [], []
    for record in sorted(done, key=lambda r: r["started_offset_seconds"] or 0.0):
        x = (record["started_offset_seconds"] or 0.0) / 60.0
        value = record["values"][0] if record["values"] else None
        if record["state"] == "pruned":
            last = list(record["intermediate"].values())
            axes.scatter([x], [last[-1] if last else 0.0], marker="v", color="grey", zorder=3)
            continue
        if record["feasible"] and value is not None:
            axes.scatter([x], [value], color="tab:blue", zorder=3)
            if best is None or (value < best if minimize else value > best):
                best = value
        elif value is not None and not record.get("refused"):
            axes.scatter([x], [value], marker="x", color="tab:red", zorder=3)
        else:  # refused by the engine: no figures; drawn on the axis
            axes.scatter([x], [0.0], marker="x", color="tab:red", zorder=3)
        if best is not None:
            best_x.append(x)
            best_y.append(best)
    if best_x:
        axes.step(best_x, best_y, where="post", color="tab:green", label="best so far")
    axes.scatter([], [], color="tab:blue", label="feasible")
    axes.scatter([], [], marker="x", color="tab:red", label="infeasible (SLO or refused)")
    axes.scatter([], [], marker="v", color="grey", label="pruned (last intermediate)")
    axes.set_xlabel("trial start (minutes since the tune began)")
    axes.set_ylabel(name)
    axes.set_title(f"{name} per trial ({settings.sampler})")
    axes.legend(fontsize=8)
    _finish(figure, path)


def _points(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], float, float]]:
    points = []
    for record in records:
        figures = record["figures"] or {}
        if record["state"] == "complete" and figures.get("completed") and record.get("repeat_of") is None:
            points.append((record, float(figures["request_throughput"]), float(figures["p99_e2el_ms"])))
    return points


def plot_pareto(records: list[dict[str, Any]], settings: TuneSettings, path: Path) -> None:
    points = _points(records)
    feasible = [p for p in points if p[0]["feasible"]]
    if not points:
        _empty(path, "Pareto front", "no completed trials with figures")
        return
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    axes.scatter([p[1] for p in points if not p[0]["feasible"]], [p[2] for p in points if not p[0]["feasible"]],
                 marker="x", color="tab:red", label="breaks the SLO")
    axes.scatter([p[1] for p in feasible], [p[2] for p in feasible], color="tab:blue", label="feasible")
    front = [feasible[i] for i in pareto_indices([(p[1], p[2]) for p in feasible])]
    if front:
        axes.plot([p[1] for p in front], [p[2] for p in front], color="tab:green", marker="o", label="Pareto front")
        for record, x, y in front:
            axes.annotate(f"#{record['number']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if settings.slo_p99_e2el_seconds is not None:
        axes.axhline(settings.slo_p99_e2el_seconds * 1000.0, color="tab:orange", linestyle="--", label="p99 SLO")
    axes.set_xlabel("request throughput (req/s)")
    axes.set_ylabel("p99 end-to-end latency (ms)")
    axes.set_title("throughput vs p99 latency: Pareto front of feasible trials")
    axes.legend(fontsize=8)
    _finish(figure, path)


def plot_latency_vs_throughput(records: list[dict[str, Any]], dimensions: Sequence[Dimension], path: Path) -> None:
    points = _points(records)
    if not points or not dimensions:
        _empty(path, "p99 latency vs throughput", "no completed trials with figures")
        return
    dimension = next((d for d in dimensions if d.name == "max_batch_size"), dimensions[0])
    levels = list(dimension.levels)
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    colours = plt.get_cmap("viridis", max(len(levels), 2))
    for index, level in enumerate(levels):
        chosen = [p for p in points if p[0]["knobs"].get(dimension.name) == level]
        if chosen:
            axes.scatter([p[1] for p in chosen], [p[2] for p in chosen], color=colours(index),
                         label=f"{dimension.name}={level}")
    axes.set_xlabel("request throughput (req/s)")
    axes.set_ylabel("p99 end-to-end latency (ms)")
    axes.set_title(f"p99 latency vs throughput, coloured by {dimension.name}")
    axes.legend(fontsize=7, ncol=2)
    _finish(figure, path)


def importances(study: optuna.Study, settings: TuneSettings) -> tuple[dict[str, float], str]:
    """PED-ANOVA importances of each knob for the primary objective, or ({}, why not)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}, "needs at least 2 completed trials"
    values = {t.values[0] for t in complete if t.values}
    if len(values) < 2:
        return {}, "every completed trial has the same value"
    # PED-ANOVA (optuna's own, no scikit-learn) scores how much each knob matters for reaching the good
    # end of the objective; it looks for low values, so a maximized objective is negated.
    sign = -1.0 if settings.directions()[0] == "maximize" else 1.0
    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        with warnings.catch_warnings():  # its "looks for low values" reminder: the sign above handles it
            warnings.simplefilter("ignore", UserWarning)
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                                target=lambda t: sign * t.values[0])), ""
    except (RuntimeError, ValueError, ImportError) as exc:
        return {}, f"optuna could not compute importances: {exc}"


def plot_importances(found: dict[str, float], why_not: str, settings: TuneSettings, path: Path) -> None:
    if not found:
        _empty(path, "parameter importances", why_not)
        return
    figure, axes = plt.subplots(figsize=(6.4, 0.5 + 0.5 * len(found) + 1))
    names = list(found)[::-1]
    axes.barh(names, [found[name] for name in names], color="tab:purple")
    axes.set_xlabel(f"importance for {settings.objective_names()[0]} (PED-ANOVA)")
    axes.set_title("parameter importances")
    _finish(figure, path)


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _trial_rows(records: list[dict[str, Any]], dimensions: Sequence[Dimension]) -> tuple[list[str], list[list[str]]]:
    header = ["#", "state", *[d.name for d in dimensions], "goodput req/s", "req/s", "out tok/s", "p99 TTFT ms",
              "p99 TPOT ms", "p99 E2E ms", "feasible", "note"]
    rows = []
    for record in records:
        figures = record["figures"] or {}
        note = record.get("refused") or ("interrupted" if record.get("interrupted") else "") or (
            f"repeat of #{record['repeat_of']} (not measured again)" if record.get("repeat_of") is not None else "")
        rows.append([str(record["number"]), record["state"], *[_format(record["knobs"].get(d.name)) for d in dimensions],
                     _format(figures.get("request_goodput")), _format(figures.get("request_throughput")),
                     _format(figures.get("output_throughput")), _format(figures.get("p99_ttft_ms")),
                     _format(figures.get("p99_tpot_ms")), _format(figures.get("p99_e2el_ms")),
                     "-" if record["state"] != "complete" else "yes" if record["feasible"] else "no",
                     str(note)[:80]])
    return header, rows


def write_report(study: optuna.Study, settings: TuneSettings, dimensions: Sequence[Dimension],
                 output_dir: Path, profile: Profile | None, context: dict[str, Any]) -> dict[str, Path]:
    """Write every report file; returns name -> path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    records = trial_records(study)
    paths = {name: output_dir / file for name, file in PLOT_FILES.items()}
    plot_objective_over_time(records, settings, paths["objective_over_time"])
    plot_pareto(records, settings, paths["pareto_front"])
    plot_latency_vs_throughput(records, dimensions, paths["latency_vs_throughput"])
    found, why_not = importances(study, settings)
    plot_importances(found, why_not, settings, paths["param_importances"])
    trials_path = output_dir / "trials.json"
    trials_path.write_text(json.dumps({"settings": settings.identity(), "space": [d.to_dict() for d in dimensions],
                                       "context": context, "importances": found, "trials": records},
                                      indent=2, default=str) + "\n", encoding="utf-8")
    paths["trials"] = trials_path
    if profile is not None:
        profile.write(output_dir / "profile.yaml")
        paths["profile"] = output_dir / "profile.yaml"
    header, rows = _trial_rows(records, dimensions)
    best = best_trial(study, settings)
    summary = _summary_lines(settings, best, records, context, found, why_not)
    (output_dir / "report.md").write_text(_markdown(summary, header, rows), encoding="utf-8")
    (output_dir / "report.html").write_text(_html(summary, header, rows, paths), encoding="utf-8")
    paths["report_md"] = output_dir / "report.md"
    paths["report_html"] = output_dir / "report.html"
    return paths


def _summary_lines(settings: TuneSettings, best: optuna.trial.FrozenTrial | None, records: list[dict[str, Any]],
                   context: dict[str, Any], found: dict[str, float], why_not: str) -> list[str]:
    slo = [f"p99 {name} <= {value * 1000:g} ms" for name, value in (
        ("e2e", settings.slo_p99_e2el_seconds), ("TTFT", settings.slo_p99_ttft_seconds),
        ("TPOT", settings.slo_p99_tpot_seconds)) if value is not None]
    states: dict[str, int] = {}
    for record in records:
        states[record["state"]] = states.get(record["state"], 0) + 1
    feasible = sum(1 for record in records if record["feasible"])
    load = (f"closed loop, concurrency {settings.concurrency}" if settings.request_rate is None
            else f"Poisson {settings.request_rate:g} req/s")
    lines = [
        f"- engine: {context.get('engine_url', '?')} ({context.get('model', 'model unknown')})",
        f"- workload: {context.get('workload', '?')}; load: {load}; warm-up {settings.warmup_seconds:g} s, "
        f"measurement window {settings.measure_seconds:g} s per trial",
        f"- objective: {', '.join(settings.objective_names())} ({settings.sampler}); SLO: {', '.join(slo) or 'none'}",
        f"- trials: {len(records)} ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}); feasible {feasible}",
    ]
    if best is not None:
        figures = best.user_attrs.get("figures", {})
        lines.append(f"- best: trial #{best.number} {json.dumps(best.user_attrs.get('knobs', {}))}: "
                     f"goodput {_format(figures.get('request_goodput'))} req/s, throughput "
                     f"{_format(figures.get('request_throughput'))} req/s, p99 e2e {_format(figures.get('p99_e2el_ms'))} ms")
    else:
        lines.append("- best: no feasible trial (every trial broke the SLO or was refused); no profile written")
    if found:
        lines.append("- importances: " + ", ".join(f"{name} {value:.2f}" for name, value in found.items()))
    else:
        lines.append(f"- importances: not computed ({why_not})")
    return lines


def _markdown(summary: list[str], header: list[str], rows: list[list[str]]) -> str:
    parts = ["# dsagent tune report", "", *summary, "", "## Plots", ""]
    for name, file in PLOT_FILES.items():
        parts.append(f"![{name}]({file})")
        parts.append("")
    parts += ["## Trials", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    parts += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    parts += ["", "Files: trials.json (every trial), profile.yaml (the best feasible trial; "
              "`dsagent tune apply profile.yaml` rolls it out), study.db (optuna, for --resume).", ""]
    return "\n".join(parts)


def _html(summary: list[str], header: list[str], rows: list[list[str]], paths: dict[str, Path]) -> str:
    images = []
    for name in PLOT_FILES:
        encoded = base64.b64encode(paths[name].read_bytes()).decode()
        images.append(f'<figure><img alt="{name}" src="data:image/png;base64,{encoded}"><figcaption>{name}'
                      "</figcaption></figure>")
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    table += "</table>"
    items = "".join(f"<li>{html.escape(line.removeprefix('- '))}</li>" for line in summary)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}figure{display:inline-block;margin:8px}"
             "img{max-width:520px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>dsagent tune report</title><style>{style}"
            f"</style></head><body><h1>dsagent tune report</h1><ul>{items}</ul><h2>Plots</h2>{''.join(images)}"
            f"<h2>Trials</h2>{table}</body></html>\n")
