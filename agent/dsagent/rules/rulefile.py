"""Rule files: Prometheus's format (groups of alerting and recording rules) plus dsagent's `actions:` and the
operator guides' short form (`metrics:` + `alerts:` with `condition` / `action`).

Why here and strict: a rule that silently means something else is worse than one refused, so every file is
validated completely before anything runs, with `file:line: problem` per mistake (unknown keys, bad
durations, PromQL the evaluator does not implement, bad templates, actions the actions package refuses).
The checks mirror Prometheus's rulefmt (promtool check rules) so a file valid here is valid there, minus
the `actions:` extension.

Short form: names in `condition` resolve through ALIASES (documented in rules/README.md) and `action`
through SHORT_ACTIONS; each alert becomes an alerting rule in a group named after the file.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsagent.rules import promql, template
from dsagent.rules.yamlines import LineDict, LineList, YamlError, line_of
from dsagent.rules.yamlines import load as load_yaml

_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_UNIT_SECONDS = (31536000, 604800, 86400, 3600, 60, 1, 0.001)
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

# Short-form metric names -> PromQL over the agent's series (rules/README.md lists them).
ALIASES: dict[str, str] = {
    "inference_latency": "(rate(inference_latency_seconds_sum[1m]) / rate(inference_latency_seconds_count[1m]))",
    "gpu_utilization": "(dsagent_gpu_utilization_ratio * 100)",
    "memory_usage": "(dsagent_gpu_memory_used_ratio * 100)",
    "gpu_temperature": "dsagent_gpu_temperature_celsius",
    "inference_qps": "inference_qps",
    "queue_length": "dsagent_engine_requests_waiting",  # the scrape maps vllm:num_requests_waiting to this
}
# Short-form action words -> action items (dsagent.actions.spec format).
SHORT_ACTIONS: dict[str, dict[str, Any]] = {
    "scale_out": {"scale": {"replicas": "+1"}},
    "scale_in": {"scale": {"replicas": "-1"}},
    "reduce_batch_size": {"set_knob": {"knob": "max_batch_size", "factor": 0.5, "min": 1}},
    "increase_batch_size": {"set_knob": {"knob": "max_batch_size", "factor": 2.0, "max": 256}},
    "lower_power_limit": {"set_power_limit": {"fraction_of_default": 0.8}},
    "reset_power_limit": {"reset_power_limit": {}},
    "reset_gpu_clocks": {"reset_gpu_clocks": {}},
    "notify": {"notify": {}},
}
_SHORT_METRIC_TYPES = {"histogram", "gauge", "counter", "summary"}


class RuleFileError(ValueError):
    """One or more problems in rule files; .problems holds one `file:line: what` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(text: Any) -> float:
    """Prometheus's duration syntax (1h30m, 5m, 90s, 500ms) -> seconds; ValueError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool) and text == 0:
        return 0.0
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a valid duration string: {text!r}")
    if text == "0":
        return 0.0
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f'not a valid duration string: "{text}"')
    return float(sum(int(part) * unit for part, unit in zip(match.groups(), _UNIT_SECONDS, strict=True) if part))


@dataclass
class RuleSpec:
    """One validated rule."""

    kind: str  # "alert" | "record"
    name: str
    expr: str
    node: Any
    source_file: str
    line: int
    for_seconds: float = 0.0
    keep_firing_for_seconds: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    actions: list[Any] = field(default_factory=list)
    raw_actions: list[Any] = field(default_factory=list)

    def identity(self) -> tuple[Any, ...]:
        """What must stay equal for alert state to survive a reload."""
        return (self.kind, self.name, self.expr, self.for_seconds, self.keep_firing_for_seconds,
                tuple(sorted(self.labels.items())), tuple(sorted(self.annotations.items())))

    def longest_range_seconds(self) -> float:
        return _longest_range(self.node)


@dataclass
class GroupSpec:
    name: str
    source_file: str
    line: int
    interval_seconds: float | None = None
    limit: int = 0
    rules: list[RuleSpec] = field(default_factory=list)


def _longest_range(node: Any) -> float:
    import promql_parser as pp

    longest = 0.0

    def visit(n: Any) -> None:
        nonlocal longest
        if isinstance(n, pp.MatrixSelector):
            offset = n.vector_selector.offset
            longest = max(longest, n.range.total_seconds() + (offset.total_seconds() if offset else 0.0))
            return
        if isinstance(n, pp.VectorSelector):
            if n.offset:
                longest = max(longest, n.offset.total_seconds())
            return
        for attr in ("expr", "lhs", "rhs", "param"):
            child = getattr(n, attr, None)
            if child is not None and not isinstance(child, str | int | float):
                visit(child)
        for arg in getattr(n, "args", None) or []:
            visit(arg)

    visit(node)
    return longest


def _parse_actions(raw: Any, where: str) -> list[Any]:
    """The actions package's parser (dsagent.actions.spec.parse_actions); ValueError names the problem."""
    from dsagent.actions.spec import parse_actions

    return parse_actions(list(raw) if isinstance(raw, list) else raw, where)


_GROUP_KEYS = {"name", "interval", "limit", "rules", "source_tenants"}
_RULE_KEYS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations", "actions"}


def _kl(mapping: Any, key: str) -> int:
    """The line of `key` in a LineDict (its own line when the key is absent; 0 for a plain dict)."""
    return mapping.line_of(key) if isinstance(mapping, LineDict) else line_of(mapping, 0)


class _Collector:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []

    def add(self, line: int, message: str) -> None:
        self.problems.append(f"{self.path}:{line}: {message}")


def _check_labels(c: _Collector, mapping: Any, line: int, what: str, validate_templates: bool = True) -> dict[str, str]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        c.add(line, f"{what} must be a mapping of name: value")
        return {}
    result = {}
    for key, value in mapping.items():
        key_line = _kl(mapping, key) or line
        if not _LABEL_NAME.match(str(key)) or (what == "labels" and key == "__name__"):
            c.add(key_line, f"invalid {what[:-1]} name: {key}")
            continue
        text = "" if value is None else (value if isinstance(value, str) else str(value).lower()
                                          if isinstance(value, bool) else str(value))
        if validate_templates:
            try:
                template.check(text)
            except template.TemplateError as exc:
                c.add(key_line, f"{what[:-1]} {key!r}: template: {exc}")
        result[str(key)] = text
    return result


def _parse_rule(c: _Collector, raw: Any, line: int) -> RuleSpec | None:
    if not isinstance(raw, dict):
        c.add(line, "a rule must be a mapping with record or alert, and expr")
        return None
    for key in raw:
        if key not in _RULE_KEYS:
            c.add(_kl(raw, key), f"field {key} not found in type rulefmt.Rule (known: {', '.join(sorted(_RULE_KEYS))})")
    record, alert = raw.get("record"), raw.get("alert")
    if record is not None and alert is not None:
        c.add(line, "only one of 'record' and 'alert' must be set")
        return None
    if record is None and alert is None:
        c.add(line, "one of 'record' or 'alert' must be set")
        return None
    kind = "record" if record is not None else "alert"
    name = str(record if record is not None else alert)
    expr = raw.get("expr")
    expr_line = _kl(raw, "expr")
    node = None
    if expr is None or (isinstance(expr, str) and not expr.strip()):
        c.add(line, f"{kind} {name}: field 'expr' must be set in rule")
    else:
        expr = str(expr)
        try:
            node = promql.parse(expr)
        except promql.PromQLError as exc:
            c.add(expr_line, f"{kind} {name}: could not parse expression: {exc}")
    rule = RuleSpec(kind=kind, name=name, expr=str(expr or ""), node=node, source_file=c.path, line=line)
    if kind == "record":
        if not _METRIC_NAME.match(name):
            c.add(line, f"invalid recording rule name: {name}")
        for key in ("annotations", "for", "keep_firing_for", "actions"):
            if key in raw:
                c.add(_kl(raw, key), f"record {name}: invalid field '{key}' in recording rule")
    elif not name.strip():
        c.add(line, "alert name must not be empty")
    for key, attr in (("for", "for_seconds"), ("keep_firing_for", "keep_firing_for_seconds")):
        if key in raw and kind == "alert":
            try:
                setattr(rule, attr, parse_duration(raw[key]))
            except ValueError as exc:
                c.add(_kl(raw, key), f"alert {name}: {key}: {exc}")
    rule.labels = _check_labels(c, raw.get("labels"), _kl(raw, "labels"), "labels")
    if kind == "alert":
        rule.annotations = _check_labels(c, raw.get("annotations"), _kl(raw, "annotations"), "annotations")
        if raw.get("actions") is not None:
            rule.raw_actions = list(raw["actions"]) if isinstance(raw["actions"], list) else raw["actions"]
            try:
                rule.actions = _parse_actions(raw["actions"], f"alert {name}")
            except ValueError as exc:
                c.add(_kl(raw, "actions"), str(exc))
    return rule


def _parse_groups(c: _Collector, data: Any) -> list[GroupSpec]:
    groups: list[GroupSpec] = []
    if data is None:
        return groups
    if not isinstance(data, dict):
        c.add(line_of(data, 1), "a rule file is a mapping with 'groups:' (or the short form's 'alerts:')")
        return groups
    if "alerts" in data or "metrics" in data:
        return _parse_short_form(c, data)
    for key in data:
        if key != "groups":
            c.add(_kl(data, key), f"field {key} not found in type rulefmt.RuleGroups")
    raw_groups = data.get("groups") or []
    if not isinstance(raw_groups, list):
        c.add(_kl(data, "groups"), "groups must be a list")
        return groups
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_groups):
        line = raw_groups.item_lines[index] if isinstance(raw_groups, LineList) else 0
        if not isinstance(raw, dict):
            c.add(line, "a group must be a mapping with name and rules")
            continue
        for key in raw:
            if key not in _GROUP_KEYS:
                c.add(_kl(raw, key), f"field {key} not found in type rulefmt.RuleGroup")
        name = raw.get("name")
        if not name:
            c.add(line, "Groupname must not be empty")
            continue
        name = str(name)
        if name in seen:
            c.add(line, f'groupname: "{name}" is repeated in the same file')
        seen[name] = line
        group = GroupSpec(name=name, source_file=c.path, line=line)
        if raw.get("interval") is not None:
            try:
                group.interval_seconds = parse_duration(raw["interval"])
            except ValueError as exc:
                c.add(_kl(raw, "interval"), f"group {name}: interval: {exc}")
        if raw.get("limit") is not None:
            if not isinstance(raw["limit"], int) or isinstance(raw["limit"], bool) or raw["limit"] < 0:
                c.add(_kl(raw, "limit"), f"group {name}: limit must be a non-negative integer")
            else:
                group.limit = raw["limit"]
        rules = raw.get("rules") or []
        if not isinstance(rules, list):
            c.add(_kl(raw, "rules"), f"group {name}: rules must be a list")
            rules = []
        for rule_index, raw_rule in enumerate(rules):
            rule_line = rules.item_lines[rule_index] if isinstance(rules, LineList) else line
            rule = _parse_rule(c, raw_rule, rule_line)
            if rule is not None:
                group.rules.append(rule)
        groups.append(group)
    return groups


def resolve_aliases(condition: str) -> str:
    """Short-form names -> the agent's series (whole identifiers only, never inside strings or braces)."""
    out, i, depth, quote = [], 0, 0, ""
    while i < len(condition):
        ch = condition[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(condition):
                out.append(condition[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = ""
            i += 1
            continue
        if ch in "\"'`":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif depth == 0 and (ch.isalpha() or ch == "_") and (i == 0 or not (condition[i - 1].isalnum()
                                                                            or condition[i - 1] in "_:")):
            j = i
            while j < len(condition) and (condition[j].isalnum() or condition[j] in "_:"):
                j += 1
            word = condition[i:j]
            out.append(ALIASES.get(word, word))
            i = j
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _parse_short_form(c: _Collector, data: Any) -> list[GroupSpec]:
    for key in data:
        if key not in ("metrics", "alerts", "name", "interval"):
            c.add(_kl(data, key), f"unknown key {key!r} in a short-form rule file (metrics, alerts, name, interval)")
    declared = data.get("metrics") or []
    if not isinstance(declared, list):
        c.add(_kl(data, "metrics"), "metrics must be a list of {name, type}")
        declared = []
    for index, metric in enumerate(declared):
        line = declared.item_lines[index] if isinstance(declared, LineList) else _kl(data, "metrics")
        if not isinstance(metric, dict) or "name" not in metric:
            c.add(line, "each metrics item needs a name (and a type)")
            continue
        if metric.get("type") is not None and metric.get("type") not in _SHORT_METRIC_TYPES:
            c.add(line, f"metric {metric['name']}: unknown type {metric.get('type')!r} "
                        f"(use {', '.join(sorted(_SHORT_METRIC_TYPES))})")
        if str(metric["name"]) not in ALIASES:
            c.add(line, f"metric {metric['name']}: no alias for this name; known: {', '.join(sorted(ALIASES))} "
                        "(or write the rule in Prometheus's groups format)")
    group = GroupSpec(name=str(data.get("name") or Path(c.path).stem), source_file=c.path, line=1)
    if data.get("interval") is not None:
        try:
            group.interval_seconds = parse_duration(data["interval"])
        except ValueError as exc:
            c.add(_kl(data, "interval"), f"interval: {exc}")
    alerts = data.get("alerts") or []
    if not isinstance(alerts, list):
        c.add(_kl(data, "alerts"), "alerts must be a list of {condition, action}")
        return [group]
    allowed = {"condition", "action", "actions", "name", "for", "severity", "labels", "annotations"}
    for index, raw in enumerate(alerts):
        line = alerts.item_lines[index] if isinstance(alerts, LineList) else 1
        if not isinstance(raw, dict) or "condition" not in raw:
            c.add(line, "each alert needs a condition")
            continue
        for key in raw:
            if key not in allowed:
                c.add(_kl(raw, key), f"unknown key {key!r} in a short-form alert ({', '.join(sorted(allowed))})")
        action_word = raw.get("action")
        name = str(raw.get("name") or (f"{action_word}_{index}" if action_word else f"alert_{index}"))
        actions: list[Any] = list(raw.get("actions") or [])
        if action_word is not None:
            if action_word not in SHORT_ACTIONS:
                c.add(_kl(raw, "action"), f"alert {name}: unknown action {action_word!r}; "
                                             f"known: {', '.join(sorted(SHORT_ACTIONS))}")
            else:
                actions.append(SHORT_ACTIONS[action_word])
        rule_raw = LineDict({"alert": name, "expr": resolve_aliases(str(raw["condition"]))})
        rule_raw.line = line
        rule_raw.key_lines = {"alert": line, "expr": _kl(raw, "condition")}
        for key in ("for", "labels", "annotations"):
            if key in raw:
                rule_raw[key] = raw[key]
                rule_raw.key_lines[key] = _kl(raw, key)
        if raw.get("severity") is not None:
            rule_raw["labels"] = {**(raw.get("labels") or {}), "severity": str(raw["severity"])}
        if actions:
            rule_raw["actions"] = actions
            rule_raw.key_lines["actions"] = _kl(raw, "action") if "action" in raw else _kl(raw, "actions")
        rule = _parse_rule(c, rule_raw, line)
        if rule is not None:
            rule.raw_actions = actions
            group.rules.append(rule)
    return [group]


def load_text(text: str, path: str) -> list[GroupSpec]:
    """Parse one file's text; RuleFileError lists every problem found."""
    c = _Collector(path)
    try:
        data = load_yaml(text)
    except YamlError as exc:
        line, _, message = str(exc).partition(": ")
        raise RuleFileError([f"{path}:{line}: {message}"]) from None
    groups = _parse_groups(c, data)
    if c.problems:
        raise RuleFileError(c.problems)
    return groups


def load_file(path: str | Path) -> list[GroupSpec]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleFileError([f"{path}:0: cannot read: {exc.strerror or exc}"]) from None
    return load_text(text, str(path))


def expand_paths(patterns: list[str], base: Path | None = None) -> list[Path]:
    """Files and globs -> sorted existing files (a pattern matching nothing is an error, as a typo is)."""
    files: list[Path] = []
    missing = []
    for pattern in patterns:
        full = pattern if base is None or Path(pattern).is_absolute() else str(base / pattern)
        matches = sorted(glob.glob(full, recursive=True))
        if not matches:
            missing.append(pattern)
        files.extend(Path(m) for m in matches if Path(m).is_file())
    if missing:
        raise RuleFileError([f"{m}:0: no rule file matches this path" for m in missing])
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def load_files(paths: list[Path]) -> list[GroupSpec]:
    """All files or nothing: RuleFileError lists the problems of every bad file."""
    groups: list[GroupSpec] = []
    problems: list[str] = []
    for path in paths:
        try:
            groups.extend(load_file(path))
        except RuleFileError as exc:
            problems.extend(exc.problems)
    seen: dict[tuple[str, str], int] = {}
    for group in groups:
        key = (group.source_file, group.name)
        if key in seen:
            problems.append(f"{group.source_file}:{group.line}: group {group.name!r} repeated")
        seen[key] = group.line
    if problems:
        raise RuleFileError(problems)
    return groups
