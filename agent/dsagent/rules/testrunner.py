"""`dsagent rules test`: promtool's rule unit-test format, run the way promtool 2.42 runs it
(cmd/promtool/unittest.go), so the same file passes or fails in both (the differential suite checks that).

Why a faithful copy and not a look-alike: operators keep their tests in promtool's format and run them in
CI with promtool; a second runner that disagrees would be worse than none. Semantics kept: input series in
expanding notation (`a+bxn`, `axn`, `_`, `_xn`, `stale`) spaced by the test group's interval from t=0;
every rule group evaluated at 0, evaluation_interval, ... up to the largest eval_time; alerts compared at
the evaluation with ts <= eval_time < ts + evaluation_interval (firing instances only, labels and
annotations exactly); promql_expr_test queried at eval_time after all evaluations; values compared exactly.
Output and exit status as promtool's ("Unit Testing:  FILE", "  SUCCESS" / "  FAILED:" + exp/got).

Extension (not read by promtool): `exp_actions` on an alert_rule_test item, the Decisions the firing rules'
`actions:` produce at that time (from dsagent.actions.planner.decisions_for_test when installed, else the
actions' canonical dicts), with the group's optional `knob_state` as the current values.
"""

from __future__ import annotations

import bisect
import glob
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsagent.rules import promql
from dsagent.rules.engine import Group
from dsagent.rules.events import RuleEvent
from dsagent.rules.rulefile import RuleFileError, load_files, parse_duration
from dsagent.rules.yamlines import LineDict, YamlError
from dsagent.rules.yamlines import load as load_yaml
from dsagent.store import LabelMatcher

Labels = dict[str, str]
STALE_NAN = struct.unpack(">d", bytes.fromhex("7ff0000000000002"))[0]


def is_stale(value: float) -> bool:
    return math.isnan(value) and struct.pack(">d", value) == bytes.fromhex("7ff0000000000002")


# ---- storage ------------------------------------------------------------------------------------------


class _Series:
    __slots__ = ("labels", "times", "values")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.times: list[int] = []
        self.values: list[float] = []


class TestStorage:
    """In-memory series with stale markers: promql.Storage for reads, engine.Appender for rule outputs."""

    __test__ = False  # not a pytest class

    def __init__(self, order_seed: int | None = None) -> None:
        # Series are selected in creation order, as Prometheus's head returns them (by series ref) to an
        # unsorted Select: the order sums and averages add in, so results agree with promtool to the last
        # bit. promtool creates the input series in Go map order, which is not always the file's order;
        # `order_seed` draws another order, so corpus generators can keep only order-independent results.
        import random

        self._rng = random.Random(order_seed) if order_seed is not None else None
        self._rank: dict[int, float] = {}
        self.series: dict[tuple[tuple[str, str], ...], _Series] = {}
        self.by_name: dict[str, list[_Series]] = {}

    def append(self, labels: Labels, t_ms: int, value: float) -> None:
        key = tuple(sorted(labels.items()))
        series = self.series.get(key)
        if series is None:
            series = _Series(dict(labels))
            self._rank[id(series)] = self._rng.random() if self._rng is not None else float(len(self.series))
            self.series[key] = series
            self.by_name.setdefault(labels.get("__name__", ""), []).append(series)
        if series.times and t_ms <= series.times[-1]:
            return  # out of order or duplicate timestamp: dropped, as the TSDB appender refuses it
        series.times.append(t_ms)
        series.values.append(value)

    def append_stale(self, labels: Labels, t_ms: int) -> None:
        self.append(labels, t_ms, STALE_NAN)

    def _select(self, name: str | None, matchers: list[LabelMatcher] | Any) -> list[_Series]:
        candidates = self.by_name.get(name, []) if name is not None else list(self.series.values())
        selected = [s for s in candidates if all(m.matches(s.labels) for m in matchers)]
        if self._rng is not None:  # another creation order (see __init__); else creation order as stored
            selected.sort(key=lambda s: self._rank[id(s)])
        return selected

    def instant(self, name: str | None, matchers: Any, at_ms: int, lookback_ms: int) -> list[tuple[Labels, int, float]]:
        out = []
        for series in self._select(name, matchers):
            index = bisect.bisect_right(series.times, at_ms) - 1
            if index < 0:
                continue
            t, v = series.times[index], series.values[index]
            if t < at_ms - lookback_ms or is_stale(v):
                continue
            out.append((dict(series.labels), t, v))
        return out

    def window(self, name: str | None, matchers: Any, start_ms: int, end_ms: int) -> list[tuple[Labels, promql.Points]]:
        out = []
        for series in self._select(name, matchers):
            first = bisect.bisect_left(series.times, start_ms)
            last = bisect.bisect_right(series.times, end_ms)
            kept = [i for i in range(first, last) if not is_stale(series.values[i])]
            if kept:
                out.append((dict(series.labels), promql.Points([series.times[i] for i in kept],
                                                               [series.values[i] for i in kept], seconds=False)))
        return out


# ---- expanding notation ------------------------------------------------------------------------------------


class SeriesFormatError(ValueError):
    pass


def _number(text: str) -> float:
    lowered = text.lower()
    if lowered in ("inf", "+inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    if lowered in ("nan", "+nan", "-nan"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise SeriesFormatError(f"bad number {text!r} in series values") from None


def expand_values(text: str) -> list[float | None]:
    """Expanding notation -> values (None = omitted): `1+2x3` = 1 3 5 7, `5x2` = 5 5 5, `_x2` = _ _."""
    import re

    out: list[float | None] = []
    for item in str(text).split():
        if item == "_":
            out.append(None)
            continue
        if item.startswith("_x"):
            out.extend([None] * int(item[2:]))
            continue
        if item == "stale":
            out.append(STALE_NAN)
            continue
        match = re.fullmatch(r"([+-]?[^+\-x]+?)(?:([+-][^x]+))?x(\d+)", item)
        if match:  # `0x5` is six zeros here, never hex (promtool's series lexer)
            start = STALE_NAN if match.group(1) == "stale" else _number(match.group(1))
            times = int(match.group(3))
            if match.group(2) is None:
                out.extend([start] * (times + 1))
            else:
                step = _number(match.group(2))
                current = start
                for _ in range(times + 1):
                    out.append(current)
                    current += step
            continue
        out.append(_number(item))
    return out


def parse_series_labels(text: str) -> Labels:
    """`name{a="b"}` or `{__name__="x", a="b"}` -> labels (promtool's series syntax)."""
    import promql_parser as pp

    if text.strip() in ("{}", ""):
        return {}
    try:
        node = pp.parse(text)
    except ValueError as exc:
        raise SeriesFormatError(f"bad series {text!r}: {exc}") from None
    if not isinstance(node, pp.VectorSelector):
        raise SeriesFormatError(f"bad series {text!r}: expected a metric name with labels")
    labels: Labels = {}
    if node.name:
        labels["__name__"] = node.name
    for matcher in node.matchers.matchers:
        if not str(matcher.op).endswith("Equal") or str(matcher.op).endswith("NotEqual"):
            raise SeriesFormatError(f"bad series {text!r}: only = label pairs are allowed")
        labels[matcher.name] = matcher.value
    return {k: v for k, v in labels.items() if v != ""}


# ---- promtool's text forms ---------------------------------------------------------------------------------


def go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def labels_string(labels: Labels) -> str:
    """Go's labels.Labels.String(): {a="b", c="d"} sorted by name."""
    return "{" + ", ".join(f"{k}={go_quote(v)}" for k, v in sorted(labels.items())) + "}"


def format_e(value: float) -> str:
    """strconv.FormatFloat(v, 'E', -1, 64): 2E+00, 1.234567E+06, NaN, +Inf."""
    from decimal import Decimal

    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return f"{sign}0E+00"
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple))
    exp10 = len(digits) + int(exponent) - 1
    digits = digits.rstrip("0") or "0"
    body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{body}E{'+' if exp10 >= 0 else '-'}{abs(exp10):02d}"


def go_duration(ms: int) -> str:
    """time.Duration.String() for whole milliseconds: 1m0s, 0s, 1h30m0s, 1.5s."""
    if ms == 0:
        return "0s"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = rest / 1000
    if hours == 0 and minutes == 0 and seconds < 1:
        return f"{sign}{int(rest)}ms"
    sec_text = f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{sec_text}"
    if minutes:
        return f"{sign}{minutes}m{sec_text}"
    return f"{sign}{sec_text}"


def model_duration(ms: int) -> str:
    """model.Duration.String(): 5m, 1h30m, 0s, 500ms."""
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in (("y", 31_536_000_000), ("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000),
                       ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _indent(lines: str, indent: str) -> str:
    parts = lines.split("\n")
    return "\n".join(parts[:1] + [indent + p for p in parts[1:]])


def _alerts_string(alerts: list[tuple[Labels, Labels]]) -> str:
    if not alerts:
        return "[]"
    rendered = [f"Labels:{labels_string(lb)}\nAnnotations:{labels_string(an)}" for lb, an in alerts]
    text = "[\n0:" + _indent("\n" + rendered[0], "  ")
    for index, item in enumerate(rendered[1:], start=1):
        text += ",\n" + f"{index}:" + _indent("\n" + item, "  ")
    return text + "\n]"


def _alert_sort_key(alert: tuple[Labels, Labels]) -> tuple[Any, ...]:
    return (sorted(alert[0].items()), sorted(alert[1].items()))


# ---- the runner -----------------------------------------------------------------------------------------------


@dataclass
class FileResult:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _duration_ms(raw: Any, what: str) -> int:
    try:
        return round(parse_duration(raw if raw is not None else "0") * 1000)
    except ValueError as exc:
        raise SeriesFormatError(f"{what}: {exc}") from None


_FILE_KEYS = {"rule_files", "evaluation_interval", "group_eval_order", "tests"}
_GROUP_KEYS = {"interval", "input_series", "alert_rule_test", "promql_expr_test", "external_labels", "external_url",
               "name", "knob_state"}


def _strict(mapping: Any, allowed: set[str], type_name: str, errors: list[str]) -> None:
    if isinstance(mapping, LineDict):
        for key in mapping:
            if key not in allowed:
                errors.append(f"yaml: unmarshal errors:\n  line {mapping.line_of(key)}: field {key} not found in type "
                              f"{type_name}")


def run_file(path: str | Path) -> FileResult:
    """Run one promtool test file; the result's errors read as promtool prints them."""
    result = FileResult(str(path))
    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        result.errors.append(f"open {path}: {exc.strerror}")
        return result
    except YamlError as exc:
        result.errors.append(f"{path}:{exc}")
        return result
    if not isinstance(data, dict):
        result.errors.append(f"{path}: a test file is a mapping with rule_files and tests")
        return result
    _strict(data, _FILE_KEYS, "main.unitTestFile", result.errors)
    for group in data.get("tests") or []:
        _strict(group, _GROUP_KEYS, "main.testGroup", result.errors)
        for case in (group or {}).get("alert_rule_test") or []:
            _strict(case, {"eval_time", "alertname", "exp_alerts", "exp_actions"}, "main.alertTestCase", result.errors)
        for case in (group or {}).get("promql_expr_test") or []:
            _strict(case, {"expr", "eval_time", "exp_samples"}, "main.promqlTestCase", result.errors)
    if result.errors:
        return result
    base = Path(path).parent
    rule_files: list[Path] = []
    for pattern in data.get("rule_files") or []:
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        matches = sorted(glob.glob(full))
        if not matches:
            result.warnings.append(f"  WARNING: no file match pattern {full}")
        rule_files.extend(Path(m) for m in matches)
    try:
        eval_interval_ms = _duration_ms(data.get("evaluation_interval"), "evaluation_interval") or 60_000
    except SeriesFormatError as exc:
        result.errors.append(str(exc))
        return result
    order: dict[str, int] = {}
    for index, name in enumerate(data.get("group_eval_order") or []):
        if name in order:
            result.errors.append(f"group name repeated in evaluation order: {name}")
            return result
        order[name] = index
    for test_group in data.get("tests") or []:
        result.errors.extend(_run_group(test_group or {}, eval_interval_ms, order, rule_files))
    return result


def _run_group(tg: dict[str, Any], eval_interval_ms: int, order: dict[str, int], rule_files: list[Path],
               observed: dict[str, Any] | None = None, order_seed: int | None = None) -> list[str]:
    """One test group; `observed` (when given) collects what was got, for corpus generators."""
    errors: list[str] = []
    storage = TestStorage(order_seed)
    try:
        interval_ms = _duration_ms(tg.get("interval"), "interval")
        for item in tg.get("input_series") or []:
            labels = parse_series_labels(str(item.get("series", "")))
            for index, value in enumerate(expand_values(str(item.get("values", "")))):
                if value is not None:
                    storage.append(labels, index * interval_ms, value)
    except (SeriesFormatError, AttributeError) as exc:
        return [str(exc)]
    try:
        specs = load_files(rule_files)
    except RuleFileError as exc:
        return list(exc.problems)
    external = {str(k): str(v) for k, v in (tg.get("external_labels") or {}).items()}
    groups = [Group(spec, interval_ms / 1000 or 60.0) for spec in specs]
    groups.sort(key=lambda g: order.get(g.name, 0))
    alert_tests = list(tg.get("alert_rule_test") or [])
    for case in alert_tests:
        if not case.get("alertname"):
            suffix = f" (in TestGroup {tg['name']})" if tg.get("name") else ""
            return [f"an item under alert_rule_test misses required attribute alertname at eval_time "
                    f"{model_duration(_duration_ms(case.get('eval_time'), 'eval_time'))}{suffix}"]
    try:
        eval_times = sorted({_duration_ms(case.get("eval_time"), "eval_time") for case in alert_tests})
        max_eval = max([*eval_times, *(_duration_ms(c.get("eval_time"), "eval_time")
                                       for c in tg.get("promql_expr_test") or [])], default=0)
    except SeriesFormatError as exc:
        return [str(exc)]
    current = 0
    ts = 0
    while ts <= max_eval:
        eval_errors = []
        events: list[RuleEvent] = []
        cache: dict[Any, Any] = {}  # as the agent evaluates a tick (the differential suite proves it faithful)
        for group in groups:
            events.extend(group.evaluate(storage, storage, ts, external_labels=external, cache=cache))
            for rule in group.rules:
                if rule.last_error:
                    eval_errors.append(f"    rule: {rule.name}, time: {go_duration(ts)}, err: {rule.last_error}")
        errors.extend(eval_errors)
        if eval_errors:
            return errors
        while current < len(eval_times) and ts <= eval_times[current] < ts + eval_interval_ms:
            t = eval_times[current]
            for case in alert_tests:
                if _duration_ms(case.get("eval_time"), "eval_time") != t:
                    continue
                errors.extend(_check_alerts(tg, case, groups, t, events, observed))
            current += 1
        ts += eval_interval_ms
    for case in tg.get("promql_expr_test") or []:
        errors.extend(_check_expr(case, storage, observed))
    return errors


def _check_alerts(tg: dict[str, Any], case: dict[str, Any], groups: list[Group], t_ms: int,
                  events: list[RuleEvent], observed: dict[str, Any] | None = None) -> list[str]:
    name = str(case["alertname"])
    got: list[tuple[Labels, Labels]] = []
    for group in groups:
        for rule in group.rules:
            if rule.spec.kind == "alert" and rule.name == name:
                got.extend((dict(a.labels), dict(a.annotations)) for a in rule.active.values() if a.state == "firing")
    expected = []
    for alert in case.get("exp_alerts") or []:
        labels = {str(k): str(v) for k, v in (alert.get("exp_labels") or {}).items()}
        labels["alertname"] = name
        annotations = {str(k): str(v) for k, v in (alert.get("exp_annotations") or {}).items()}
        expected.append(({k: v for k, v in labels.items() if v != ""}, {k: v for k, v in annotations.items() if v != ""}))
    got.sort(key=_alert_sort_key)
    expected.sort(key=_alert_sort_key)
    if observed is not None:
        observed.setdefault("alerts", {})[(name, t_ms)] = got
        observed.setdefault("events", {})[(name, t_ms)] = [e for e in events if e.rule == name]
    errors = []
    if got != expected:
        test_name = f"    name: {tg['name']},\n" if tg.get("name") else ""
        errors.append(f"{test_name}    alertname: {name}, time: {model_duration(t_ms)}, \n"
                      f"        exp:{_indent(_alerts_string(expected), '            ')}, \n"
                      f"        got:{_indent(_alerts_string(got), '            ')}")
    if "exp_actions" in case:
        errors.extend(_check_actions(tg, case, name, t_ms, events))
    return errors


def decisions_for(events: list[RuleEvent], knob_state: dict[str, Any]) -> list[dict[str, Any]]:
    """The actions planner's view of the events when installed, else each firing action's canonical dict."""
    try:
        from dsagent.actions.planner import decisions_for_test
    except ImportError:
        decisions: list[dict[str, Any]] = []
        for event in events:
            for spec in event.actions:
                describe = getattr(spec, "describe", None)
                decisions.append({"rule": event.rule, **(describe() if callable(describe) else dict(spec))})
        return decisions
    return decisions_for_test(events, knob_state)


def _canonical(items: list[Any]) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True, default=str) for item in items)


def _check_actions(tg: dict[str, Any], case: dict[str, Any], name: str, t_ms: int, events: list[RuleEvent]) -> list[str]:
    mine = [e for e in events if e.rule == name]
    got = decisions_for(mine, dict(tg.get("knob_state") or {}))
    expected = [dict(item) for item in case.get("exp_actions") or []]
    if _canonical(got) == _canonical(expected):
        return []
    return [f"    alertname: {name}, time: {model_duration(t_ms)}, actions:\n"
            f"        exp: {json.dumps(expected, sort_keys=True, default=str)}\n"
            f"        got: {json.dumps(got, sort_keys=True, default=str)}"]


def _check_expr(case: dict[str, Any], storage: TestStorage, observed: dict[str, Any] | None = None) -> list[str]:
    expr = str(case.get("expr", ""))
    t_ms = _duration_ms(case.get("eval_time"), "eval_time")
    try:
        value = promql.evaluate(storage, expr, t_ms / 1000.0)
    except promql.PromQLError as exc:
        if observed is not None:
            observed.setdefault("expr_errors", {})[(expr, t_ms)] = str(exc)
        return [f"    expr: {go_quote(expr)}, time: {model_duration(t_ms)}, err: {exc}"]
    got: list[tuple[Labels, float]]
    if isinstance(value, promql.Scalar):
        got = [({}, value.value)]
    elif isinstance(value, list) and (not value or isinstance(value[0], promql.Sample)):
        got = [(s.labels, s.value) for s in value]  # type: ignore[union-attr]
    else:
        return [f"    expr: {go_quote(expr)}, time: {model_duration(t_ms)}, err: rule result is not a vector or scalar"]
    expected = []
    for sample in case.get("exp_samples") or []:
        try:
            labels = parse_series_labels(str(sample.get("labels", "{}"))) if sample.get("labels") else {}
        except SeriesFormatError as exc:
            return [f"    expr: {go_quote(expr)}, time: {model_duration(t_ms)}, err: labels {go_quote(str(sample.get('labels')))}: {exc}"]
        expected.append((labels, float(sample.get("value", 0))))
    key = lambda item: sorted(item[0].items())  # noqa: E731
    got.sort(key=key)
    if observed is not None:
        observed.setdefault("samples", {})[(expr, t_ms)] = got
    expected.sort(key=key)
    same = len(got) == len(expected) and all(g[0] == e[0] and g[1] == e[1] for g, e in zip(got, expected, strict=True))
    if same:
        return []

    def render(items: list[tuple[Labels, float]]) -> str:
        return ", ".join(f"{labels_string(lb)} {format_e(v)}" for lb, v in items) if items else "nil"

    return [f"    expr: {go_quote(expr)}, time: {model_duration(t_ms)},\n        exp: {render(expected)}\n"
            f"        got: {render(got)}"]


def run_files(paths: list[str], out: Any, err: Any) -> int:
    """Run each file, print like promtool; returns promtool's exit status (0 all passed, 1 otherwise)."""
    failed = False
    for path in paths:
        print(f"Unit Testing:  {path}", file=out)
        result = run_file(path)
        for warning in result.warnings:
            print(warning, file=err)
        if result.errors:
            print("  FAILED:", file=err)
            for error in result.errors:
                print(error, file=err)
                print(file=out)
            failed = True
        else:
            print("  SUCCESS", file=out)
        print(file=out)
    return 1 if failed else 0


def observe(test_file: str | Path, order_seed: int | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Run a test file and return (errors, per test group what was got): for corpus generators."""
    data = load_yaml(Path(test_file).read_text(encoding="utf-8"))
    base = Path(test_file).parent
    rule_files = [Path(m) for p in data.get("rule_files") or [] for m in sorted(glob.glob(str(base / p)))]
    interval = _duration_ms(data.get("evaluation_interval"), "evaluation_interval") or 60_000
    order = {name: i for i, name in enumerate(data.get("group_eval_order") or [])}
    errors: list[str] = []
    observed_groups = []
    for tg in data.get("tests") or []:
        observed: dict[str, Any] = {}
        errors.extend(_run_group(tg, interval, order, rule_files, observed, order_seed))
        observed_groups.append(observed)
    return errors, observed_groups
