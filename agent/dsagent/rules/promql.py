"""A PromQL evaluator over the agent's store, ported from Prometheus 2.42 (promql/engine.go, functions.go).

Why we wrote one: no Python package evaluates PromQL, and rules must mean exactly what they mean in
Prometheus (the differential suite runs the same files through `promtool test rules`). `promql-parser`
parses; this module walks its AST at one instant, in integer milliseconds like Prometheus, so rate()'s
extrapolation, histogram_quantile()'s bucket interpolation, the 5-minute lookback and staleness come out
bit-for-bit the same. Range queries evaluate each step as an instant (Prometheus's step alignment: start,
start+step, ... <= end). Anything outside the supported subset is refused up front by `check_expr` with
the function's name, never evaluated wrongly.

Public API (used by the Prometheus HTTP API in dsagent.prom_api):
    query_instant(store, text, at_seconds, lookback_seconds=300) -> {"resultType", "result"}
    query_range(store, text, start_seconds, end_seconds, step_seconds, lookback_seconds=300) -> matrix data
    PromQLError (a ValueError; the API answers it with errorType bad_data)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol

import promql_parser as pp

from dsagent.rules.aggregate import SUPPORTED_AGGREGATIONS, aggregate, bucket_quantile, quantile_of
from dsagent.rules.gomath import (
    go_atan2,
    go_div,
    go_format_f,
    go_log,
    go_log2,
    go_log10,
    go_max,
    go_min,
    go_mod,
    go_pow,
    go_round_to,
    kahan_inc,
)
from dsagent.rules.values import (
    NAME,
    Labels,
    Matrix,
    Point,
    Points,
    PromQLError,
    Sample,
    Scalar,
    String,
    Value,
    Vector,
    drop_name,
    labels_key,
)
from dsagent.store import LabelMatcher, TimeSeriesStore

DEFAULT_LOOKBACK_MS = 300_000


# ---- storage ------------------------------------------------------------------------------------------


class Storage(Protocol):
    """What the evaluator reads: the agent's store (through StoreStorage) or a test's series."""

    def instant(self, name: str | None, matchers: Sequence[LabelMatcher], at_ms: int,
                lookback_ms: int) -> list[tuple[Labels, int, float]]:
        """Each selected series' newest non-stale sample in [at - lookback, at]: (labels with __name__, t, v)."""
        ...

    def window(self, name: str | None, matchers: Sequence[LabelMatcher], start_ms: int,
               end_ms: int) -> list[tuple[Labels, Points]]:
        """Each selected series' non-stale samples in [start, end], oldest first; empty series left out."""
        ...


class StoreStorage:
    """The agent's TimeSeriesStore (float seconds) seen as Storage (integer milliseconds)."""

    def __init__(self, store: TimeSeriesStore) -> None:
        self.store = store

    def instant(self, name: str | None, matchers: Sequence[LabelMatcher], at_ms: int,
                lookback_ms: int) -> list[tuple[Labels, int, float]]:
        found = self.store.instant_query(name, matchers, at_ms / 1000.0, lookback_ms / 1000.0)
        return [({NAME: s.name, **dict(s.labels)}, round(s.timestamp_seconds * 1000), s.value) for s in found]

    def window(self, name: str | None, matchers: Sequence[LabelMatcher], start_ms: int,
               end_ms: int) -> list[tuple[Labels, Points]]:
        return [({NAME: series_name, **dict(labels)}, Points(times, values, seconds=True))  # type: ignore[misc]
                for series_name, labels, times, values in self.store.range_columns(name, matchers, start_ms / 1000.0,
                                                                                   end_ms / 1000.0)]


def as_storage(store: Any) -> Storage:
    return StoreStorage(store) if isinstance(store, TimeSeriesStore) else store


# ---- values -------------------------------------------------------------------------------------------


# ---- the supported subset ----------------------------------------------------------------------------

_MATCH_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}
_DROPS_NAME = {"+", "-", "*", "/", "%", "^"}  # shouldDropMetricName: atan2 keeps the metric name
_COMPARISON = {"==", "!=", ">", "<", ">=", "<="}
_SET = {"and", "or", "unless"}


def _arith(op: str, lhs: float, rhs: float) -> float:
    if op == "+":
        return lhs + rhs
    if op == "-":
        return lhs - rhs
    if op == "*":
        return lhs * rhs
    if op == "/":
        return go_div(lhs, rhs)
    if op == "%":
        return go_mod(lhs, rhs)
    if op == "^":
        return go_pow(lhs, rhs)
    if op == "atan2":
        return go_atan2(lhs, rhs)
    raise PromQLError(f"operator {op!r} not allowed here")


def _compare(op: str, lhs: float, rhs: float) -> bool:
    if op == "==":
        return lhs == rhs
    if op == "!=":
        return lhs != rhs
    if op == ">":
        return lhs > rhs
    if op == "<":
        return lhs < rhs
    if op == ">=":
        return lhs >= rhs
    return lhs <= rhs


def _elem_binop(op: str, lhs: float, rhs: float) -> tuple[float, bool]:
    """vectorElemBinop: (value, keep)."""
    if op in _COMPARISON:
        return lhs, _compare(op, lhs, rhs)
    return _arith(op, lhs, rhs), True


def _scalar_binop(op: str, lhs: float, rhs: float) -> float:
    if op in _COMPARISON:
        return 1.0 if _compare(op, lhs, rhs) else 0.0
    return _arith(op, lhs, rhs)


def _duration_ms(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, timedelta):
        return round(value.total_seconds() * 1000)
    return round(float(value) * 1000)


def _unwrap(node: Any) -> Any:
    while isinstance(node, pp.ParenExpr):
        node = node.expr
    return node


def _matchers(selector: Any) -> tuple[str | None, list[LabelMatcher]]:
    result = []
    for matcher in selector.matchers.matchers:
        op = _MATCH_OPS[str(matcher.op).rsplit(".", 1)[-1]]
        result.append(LabelMatcher(matcher.name, op, matcher.value))  # type: ignore[arg-type]
    if selector.matchers.or_matchers:
        raise PromQLError("'or' inside label matchers is not PromQL (Prometheus 2.x has no such syntax)")
    return selector.name or None, result


# ---- functions ------------------------------------------------------------------------------------------

# name -> (argument kinds, implementation). kinds: "m" matrix, "v" vector, "s" scalar, "S" string.


def _extrapolated_rate(ev: Evaluator, node: Any, matrix: Matrix, is_counter: bool, is_rate: bool) -> Vector:
    ms = _unwrap(node.args[0])
    vs = ms.vector_selector
    range_ms = _duration_ms(ms.range)
    offset_ms = _duration_ms(vs.offset)
    ts = ev.selector_time(vs)
    range_start = ts - (range_ms + offset_ms)
    range_end = ts - offset_ms
    out = []
    for labels, points in matrix:
        if len(points) < 2:
            continue
        result = points[-1][1] - points[0][1]
        if is_counter:
            values = points.values
            if not all(map(operator.le, values, values[1:])):  # a counter reset somewhere (the rare case)
                previous = values[0]
                for v in values[1:]:
                    if v < previous:
                        result += previous
                    previous = v
        duration_to_start = (points[0][0] - range_start) / 1000
        duration_to_end = (range_end - points[-1][0]) / 1000
        sampled_interval = (points[-1][0] - points[0][0]) / 1000
        average_between = sampled_interval / (len(points) - 1)
        if is_counter and result > 0 and points[0][1] >= 0:
            duration_to_zero = sampled_interval * go_div(points[0][1], result)
            if duration_to_zero < duration_to_start:
                duration_to_start = duration_to_zero
        threshold = average_between * 1.1
        extrapolate_to = sampled_interval
        extrapolate_to += duration_to_start if duration_to_start < threshold else average_between / 2
        extrapolate_to += duration_to_end if duration_to_end < threshold else average_between / 2
        factor = go_div(extrapolate_to, sampled_interval)
        if is_rate:
            factor /= range_ms / 1000
        result *= factor
        out.append(Sample(drop_name(labels), result))
    return out


def _instant_value(matrix: Matrix, is_rate: bool) -> Vector:
    out = []
    for labels, points in matrix:
        if len(points) < 2:
            continue
        (t_prev, v_prev), (t_last, v_last) = points[-2], points[-1]
        result = v_last if is_rate and v_last < v_prev else v_last - v_prev
        interval = t_last - t_prev
        if interval == 0:
            continue
        if is_rate:
            result /= interval / 1000
        out.append(Sample(drop_name(labels), result))
    return out


def _linear_regression(points: list[Point], intercept_ms: int) -> tuple[float, float]:
    n = sum_x = c_x = sum_y = c_y = sum_xy = c_xy = sum_x2 = c_x2 = 0.0
    init_y = points[0][1]
    const_y = True
    for i, (t, v) in enumerate(points):
        if const_y and i > 0 and v != init_y:
            const_y = False
        n += 1.0
        x = (t - intercept_ms) / 1e3
        sum_x, c_x = kahan_inc(x, sum_x, c_x)
        sum_y, c_y = kahan_inc(v, sum_y, c_y)
        sum_xy, c_xy = kahan_inc(x * v, sum_xy, c_xy)
        sum_x2, c_x2 = kahan_inc(x * x, sum_x2, c_x2)
    if const_y:
        if math.isinf(init_y):
            return math.nan, math.nan
        return 0.0, init_y
    sum_x, sum_y, sum_xy, sum_x2 = sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = go_div(cov_xy, var_x)
    intercept = sum_y / n - slope * sum_x / n
    return slope, intercept


def _over_time(matrix: Matrix, compute: Callable[[Points], float], keep_name: bool = False) -> Vector:
    return [Sample(labels if keep_name else drop_name(labels), compute(points)) for labels, points in matrix if points]


def _avg_values(points: Points) -> float:
    values = points.values
    if not any(map(math.isinf, values)) and not _has_nan(values):
        result = _avg_finite(values)
        if not math.isinf(result):
            return result
    mean = c = count = 0.0
    isinf = math.isinf
    for v in values:
        count += 1
        if isinf(mean):
            if isinf(v) and (mean > 0) == (v > 0):
                continue
            if not isinf(v) and not math.isnan(v):
                continue
        inc = v / count - mean / count  # Kahan-Neumaier step (kahanSumInc), inlined: the hot loop of rules
        t = mean + inc
        if abs(mean) >= abs(inc):
            c += (mean - t) + inc
        else:
            c += (inc - t) + mean
        mean = t
    return mean if isinf(mean) else mean + c


def _avg_finite(values: Sequence[float]) -> float:
    """avg_over_time's incremental Kahan mean for finite values: the same operations without the Inf checks
    (the loop every avg_over_time rule runs over its window)."""
    mean = c = count = 0.0
    for v in values:
        count += 1.0
        inc = v / count - mean / count
        t = mean + inc
        if (mean if mean >= 0 else -mean) >= (inc if inc >= 0 else -inc):
            c += (mean - t) + inc
        else:
            c += (inc - t) + mean
        mean = t
    return mean + c


def _sum_values(points: Points) -> float:
    total = c = 0.0
    for v in points.values:
        t = total + v
        if abs(total) >= abs(v):
            c += (total - t) + v
        else:
            c += (v - t) + total
        total = t
    return total if math.isinf(total) else total + c


def _has_nan(values: Sequence[float]) -> bool:
    return any(map(math.isnan, values))


def _max_values(points: Points) -> float:
    values = points.values
    if not _has_nan(values):
        return max(values)
    best = values[0]
    for v in values:
        if v > best or math.isnan(best):
            best = v
    return best


def _min_values(points: Points) -> float:
    values = points.values
    if not _has_nan(values):
        return min(values)
    best = values[0]
    for v in values:
        if v < best or math.isnan(best):
            best = v
    return best


def _stdvar_values(points: Points) -> float:
    count = mean = c_mean = aux = c_aux = 0.0
    for v in points.values:
        count += 1
        delta = v - (mean + c_mean)
        mean, c_mean = kahan_inc(delta / count, mean, c_mean)
        aux, c_aux = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux)
    return (aux + c_aux) / count


def _parse_go_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _histogram_quantile(q: float, vector: Vector) -> Vector:
    groups: dict[tuple[tuple[str, str], ...], tuple[Labels, list[tuple[float, float]]]] = {}
    for sample in vector:
        upper = _parse_go_float(sample.labels.get("le", ""))
        if upper is None:
            continue
        kept = {k: v for k, v in sample.labels.items() if k not in (NAME, "le")}
        key = labels_key(kept)
        if key not in groups:
            groups[key] = (kept, [])
        groups[key][1].append((upper, sample.value))
    return [Sample(labels, bucket_quantile(q, buckets)) for labels, buckets in groups.values() if buckets]


def _simple(fn: Callable[[float], float]) -> Callable[[Evaluator, Any, list[Any]], Vector]:
    def apply(_ev: Evaluator, _node: Any, args: list[Any]) -> Vector:
        return [Sample(drop_name(s.labels), fn(s.value)) for s in args[0]]

    return apply


def _safe(fn: Callable[[float], float]) -> Callable[[float], float]:
    def call(value: float) -> float:
        try:
            return fn(value)
        except (ValueError, OverflowError):
            if fn in (math.log, math.log2, math.log10):
                return -math.inf if value == 0 else math.nan
            if fn is math.exp:
                return math.inf
            return math.nan

    return call


def _absent_labels(node: Any) -> Labels:
    arg = _unwrap(node.args[0]) if node.args else None
    if isinstance(arg, pp.MatrixSelector):
        arg = arg.vector_selector
    if not isinstance(arg, pp.VectorSelector):
        return {}
    labels: Labels = {}
    duplicated = set()
    for matcher in arg.matchers.matchers:
        if str(matcher.op).endswith("Equal") and not str(matcher.op).endswith("NotEqual") and matcher.name != NAME:
            if matcher.name in labels:
                duplicated.add(matcher.name)
            labels[matcher.name] = matcher.value
    for name in duplicated:
        labels.pop(name, None)
    return labels


def _label_replace(ev: Evaluator, _node: Any, args: list[Any]) -> Vector:
    import re

    vector, dst, replacement, src, pattern = args
    try:
        regex = re.compile(f"^(?:{pattern})$")
    except re.error as exc:
        raise PromQLError(f"invalid regular expression in label_replace(): {pattern}") from exc
    out = []
    for sample in vector:
        match = regex.match(sample.labels.get(src, ""))
        labels = sample.labels
        if match:
            value = _go_expand(match, replacement)
            labels = dict(labels)
            if value:
                labels[dst] = value
            else:
                labels.pop(dst, None)
        out.append(Sample(labels, sample.value, sample.t))
    return out


def _go_expand(match: Any, template: str) -> str:
    """Go regexp.Expand: $1, ${1}, $name; unknown groups expand to ""."""
    import re

    def group(m: Any) -> str:
        name = m.group(1) or m.group(2)
        try:
            return match.group(int(name) if name.isdigit() else name) or ""
        except (IndexError, re.error):
            return ""

    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", group, template.replace("$$", "\0")).replace("\0", "$")


def _label_join(_ev: Evaluator, _node: Any, args: list[Any]) -> Vector:
    vector, dst, separator, *sources = args
    out = []
    for sample in vector:
        value = separator.join(sample.labels.get(src, "") for src in sources)
        labels = dict(sample.labels)
        if value:
            labels[dst] = value
        else:
            labels.pop(dst, None)
        out.append(Sample(labels, sample.value, sample.t))
    return out


def _calendar(fn: Callable[[Any], float]) -> Callable[[Evaluator, Any, list[Any]], Vector]:
    from datetime import datetime, timezone

    def apply(ev: Evaluator, _node: Any, args: list[Any]) -> Vector:
        if not args:
            return [Sample({}, fn(datetime.fromtimestamp(ev.ts / 1000, tz=timezone.utc)))]
        out = []
        for sample in args[0]:
            moment = datetime.fromtimestamp(sample.value, tz=timezone.utc)
            out.append(Sample(drop_name(sample.labels), fn(moment)))
        return out

    return apply


def _days_in_month(moment: Any) -> float:
    import calendar

    return float(calendar.monthrange(moment.year, moment.month)[1])


FUNCTIONS: dict[str, Callable[[Evaluator, Any, list[Any]], Value]] = {
    "rate": lambda ev, node, args: _extrapolated_rate(ev, node, args[0], True, True),
    "increase": lambda ev, node, args: _extrapolated_rate(ev, node, args[0], True, False),
    "delta": lambda ev, node, args: _extrapolated_rate(ev, node, args[0], False, False),
    "irate": lambda ev, node, args: _instant_value(args[0], True),
    "idelta": lambda ev, node, args: _instant_value(args[0], False),
    "deriv": lambda ev, node, args: [
        Sample(drop_name(labels), _linear_regression(points, points[0][0])[0])
        for labels, points in args[0] if len(points) >= 2],
    "predict_linear": lambda ev, node, args: [
        Sample(drop_name(labels), (lambda s_i: s_i[1] + s_i[0] * args[1])(_linear_regression(points, ev.ts)))
        for labels, points in args[0] if len(points) >= 2],
    "avg_over_time": lambda ev, node, args: _over_time(args[0], _avg_values),
    "sum_over_time": lambda ev, node, args: _over_time(args[0], _sum_values),
    "min_over_time": lambda ev, node, args: _over_time(args[0], _min_values),
    "max_over_time": lambda ev, node, args: _over_time(args[0], _max_values),
    "count_over_time": lambda ev, node, args: _over_time(args[0], lambda p: float(len(p))),
    "last_over_time": lambda ev, node, args: _over_time(args[0], lambda p: p.values[-1], keep_name=True),
    "present_over_time": lambda ev, node, args: _over_time(args[0], lambda p: 1.0),
    "quantile_over_time": lambda ev, node, args: _over_time(args[1], lambda p: quantile_of(args[0], list(p.values))),
    "stddev_over_time": lambda ev, node, args: _over_time(args[0], lambda p: math.sqrt(_stdvar_values(p))),
    "stdvar_over_time": lambda ev, node, args: _over_time(args[0], _stdvar_values),
    "changes": lambda ev, node, args: _over_time(args[0], lambda p: float(sum(
        1 for a, b in zip(p.values, p.values[1:], strict=False) if b != a and not (math.isnan(a) and math.isnan(b))))),
    "resets": lambda ev, node, args: _over_time(args[0], lambda p: float(sum(
        1 for a, b in zip(p.values, p.values[1:], strict=False) if b < a))),
    "absent_over_time": lambda ev, node, args: [] if args[0] else [Sample(_absent_labels(node), 1.0)],
    "absent": lambda ev, node, args: [] if args[0] else [Sample(_absent_labels(node), 1.0)],
    "histogram_quantile": lambda ev, node, args: _histogram_quantile(args[0], args[1]),
    "abs": _simple(abs),
    "ceil": _simple(math.ceil),
    "floor": _simple(math.floor),
    "sqrt": _simple(_safe(math.sqrt)),
    "exp": _simple(_safe(math.exp)),
    "ln": _simple(go_log),
    "log2": _simple(go_log2),
    "log10": _simple(go_log10),
    "sgn": _simple(lambda v: v if math.isnan(v) else float((v > 0) - (v < 0))),
    "round": lambda ev, node, args: [Sample(drop_name(s.labels), go_round_to(s.value, args[1] if len(args) > 1 else 1.0))
                                      for s in args[0]],
    "clamp": lambda ev, node, args: [] if args[2] < args[1] else [
        Sample(drop_name(s.labels), go_max(args[1], go_min(args[2], s.value))) for s in args[0]],
    "clamp_min": lambda ev, node, args: [Sample(drop_name(s.labels), go_max(args[1], s.value)) for s in args[0]],
    "clamp_max": lambda ev, node, args: [Sample(drop_name(s.labels), go_min(args[1], s.value)) for s in args[0]],
    "scalar": lambda ev, node, args: Scalar(args[0][0].value if len(args[0]) == 1 else math.nan),
    "vector": lambda ev, node, args: [Sample({}, args[0])],
    "time": lambda ev, node, args: Scalar(ev.ts / 1000),
    "timestamp": lambda ev, node, args: [Sample(drop_name(s.labels), s.t / 1000) for s in args[0]],
    "sort": lambda ev, node, args: sorted(args[0], key=lambda s: (not math.isnan(s.value), s.value)),
    "sort_desc": lambda ev, node, args: sorted(args[0], key=lambda s: (math.isnan(s.value), -s.value)),
    "label_replace": _label_replace,
    "label_join": _label_join,
    "minute": _calendar(lambda m: float(m.minute)),
    "hour": _calendar(lambda m: float(m.hour)),
    "day_of_week": _calendar(lambda m: float((m.weekday() + 1) % 7)),
    "day_of_month": _calendar(lambda m: float(m.day)),
    "day_of_year": _calendar(lambda m: float(m.timetuple().tm_yday)),
    "days_in_month": _calendar(_days_in_month),
    "month": _calendar(lambda m: float(m.month)),
    "year": _calendar(lambda m: float(m.year)),
}
SUPPORTED_FUNCTIONS = frozenset(FUNCTIONS)


def check_expr(node: Any) -> None:
    """Refuse what this evaluator does not implement (subqueries, unknown functions), naming it."""
    node = _unwrap(node)
    if isinstance(node, pp.SubqueryExpr):
        raise PromQLError("subqueries (expr[range:step]) are not supported by dsagent's evaluator")
    if isinstance(node, pp.Call):
        name = node.func.name
        if name not in FUNCTIONS:
            raise PromQLError(f"function {name}() is not supported by dsagent's evaluator; supported: "
                              f"{', '.join(sorted(FUNCTIONS))}")
        for arg in node.args:
            check_expr(arg)
    elif isinstance(node, pp.AggregateExpr):
        if str(node.op) not in SUPPORTED_AGGREGATIONS:
            raise PromQLError(f"aggregation {node.op}() is not supported by dsagent's evaluator")
        check_expr(node.expr)
        if node.param is not None:
            check_expr(node.param)
    elif isinstance(node, pp.BinaryExpr):
        check_expr(node.lhs)
        check_expr(node.rhs)
    elif isinstance(node, pp.UnaryExpr):
        check_expr(node.expr)
    elif isinstance(node, pp.MatrixSelector):
        check_expr(node.vector_selector)
    elif isinstance(node, pp.VectorSelector):
        _matchers(node)


def parse(text: str) -> Any:
    """Parse and check an expression; PromQLError names what is wrong."""
    if not text or not text.strip():
        raise PromQLError("empty query expression")
    try:
        node = pp.parse(text)
    except ValueError as exc:
        raise PromQLError(f"parse error: {exc}") from None
    check_expr(node)
    return node


# ---- evaluation -----------------------------------------------------------------------------------------


class Evaluator:
    """Evaluates one parsed expression at one instant (ts, integer ms) over a Storage."""

    def __init__(self, storage: Storage, ts_ms: int, lookback_ms: int = DEFAULT_LOOKBACK_MS,
                 start_ms: int | None = None, end_ms: int | None = None,
                 cache: dict[Any, Any] | None = None) -> None:
        self.cache = cache  # shared by the rules of one tick: identical selectors and range functions run once
        self.storage = storage
        self.ts: int = ts_ms
        self.lookback: int = lookback_ms
        self.start_ms = ts_ms if start_ms is None else start_ms
        self.end_ms = ts_ms if end_ms is None else end_ms

    def selector_time(self, vs: Any) -> int:
        at = getattr(vs, "at", None)
        if at is None:
            return self.ts
        kind = str(at.type).rsplit(".", 1)[-1]
        if kind == "Start":
            return self.start_ms
        if kind == "End":
            return self.end_ms
        return round(at.at.timestamp() * 1000)

    def eval(self, node: Any) -> Value:
        node = _unwrap(node)
        if isinstance(node, pp.NumberLiteral):
            return Scalar(float(node.val))
        if isinstance(node, pp.StringLiteral):
            return String(str(node.val))
        if isinstance(node, pp.VectorSelector):
            return self._vector_selector(node)
        if isinstance(node, pp.MatrixSelector):
            return self._matrix_selector(node)
        if isinstance(node, pp.UnaryExpr):
            value = self.eval(node.expr)
            if isinstance(value, Scalar):
                return Scalar(-value.value)
            vector = [Sample(drop_name(s.labels), -s.value, s.t) for s in self._vector(value)]
            _check_unique(vector)
            return vector
        if isinstance(node, pp.Call):
            return self._call(node)
        if isinstance(node, pp.AggregateExpr):
            return self._aggregate(node)
        if isinstance(node, pp.BinaryExpr):
            return self._binary(node)
        if isinstance(node, pp.SubqueryExpr):
            raise PromQLError("subqueries (expr[range:step]) are not supported by dsagent's evaluator")
        raise PromQLError(f"unsupported expression {type(node).__name__}")

    @staticmethod
    def _vector(value: Value) -> Vector:
        if not isinstance(value, list) or (value and not isinstance(value[0], Sample)):
            raise PromQLError("expected an instant vector")
        return value  # type: ignore[return-value]

    def _vector_selector(self, vs: Any) -> Vector:
        if self.cache is not None:
            key = ("vs", str(vs), self.ts, self.lookback)
            cached = self.cache.get(key)
            if cached is None:
                cached = self._vector_selector_uncached(vs)
                self.cache[key] = cached
            return list(cached)
        return self._vector_selector_uncached(vs)

    def _vector_selector_uncached(self, vs: Any) -> Vector:
        name, matchers = _matchers(vs)
        at = self.selector_time(vs) - _duration_ms(vs.offset)
        return [Sample(labels, v, t) for labels, t, v in self.storage.instant(name, matchers, at, self.lookback)]

    def _matrix_selector(self, ms: Any) -> Matrix:
        vs = ms.vector_selector
        name, matchers = _matchers(vs)
        end = self.selector_time(vs) - _duration_ms(vs.offset)
        start = end - _duration_ms(ms.range)
        return self.storage.window(name, matchers, start, end)

    def _call(self, node: Any) -> Value:
        if self.cache is not None and node.args and isinstance(_unwrap(node.args[0]), pp.MatrixSelector):
            key = ("call", str(node), self.ts, self.lookback)
            cached = self.cache.get(key)
            if cached is None:
                cached = self._call_uncached(node)
                self.cache[key] = cached
            return list(cached) if isinstance(cached, list) else cached
        return self._call_uncached(node)

    def _call_uncached(self, node: Any) -> Value:
        name = node.func.name
        implementation = FUNCTIONS.get(name)
        if implementation is None:
            raise PromQLError(f"function {name}() is not supported by dsagent's evaluator")
        args: list[Any] = []
        for arg in node.args:
            value = self.eval(arg)
            if isinstance(value, Scalar):
                args.append(value.value)
            elif isinstance(value, String):
                args.append(value.value)
            else:
                args.append(value)
        result = implementation(self, node, args)
        if isinstance(result, list) and name not in ("sort", "sort_desc"):
            _check_unique(result)  # type: ignore[arg-type]
        return result

    def _param(self, node: Any) -> Any:
        value = self.eval(node)
        if isinstance(value, Scalar | String):
            return value.value
        raise PromQLError("aggregation parameter must be a scalar or a string")

    def _aggregate(self, node: Any) -> Vector:
        op = str(node.op)
        vector = self._vector(self.eval(node.expr))
        param = self._param(node.param) if node.param is not None else None
        modifier = node.modifier
        grouping: list[str] = list(modifier.labels) if modifier is not None else []
        without = modifier is not None and str(modifier.type).endswith("Without")
        return aggregate(op, vector, grouping, without, param)

    def _binary(self, node: Any) -> Value:
        op = str(node.op)
        modifier = node.modifier
        return_bool = bool(modifier.return_bool) if modifier is not None else False
        lhs = self.eval(node.lhs)
        rhs = self.eval(node.rhs)
        if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
            return Scalar(_scalar_binop(op, lhs.value, rhs.value))
        if isinstance(lhs, Scalar) or isinstance(rhs, Scalar):
            if isinstance(lhs, Scalar):
                return _vector_scalar(op, self._vector(rhs), lhs.value, True, return_bool)
            assert isinstance(rhs, Scalar)
            return _vector_scalar(op, self._vector(lhs), rhs.value, False, return_bool)
        matching_labels: list[str] = []
        on = False
        card = "OneToOne"
        include: list[str] = []
        if modifier is not None:
            card = str(modifier.card).rsplit(".", 1)[-1]
            if modifier.matching is not None:
                on = str(modifier.matching.type).endswith("Include")
                matching_labels = list(modifier.matching.labels)
            include = list(modifier.group_labels or [])
        if op in _SET:
            card = "ManyToMany"
        left, right = self._vector(lhs), self._vector(rhs)
        signature = _signature_func(on, matching_labels)
        if op == "and":
            if not left or not right:
                return []
            right_sigs = {signature(s.labels) for s in right}
            return [s for s in left if signature(s.labels) in right_sigs]
        if op == "or":
            if not left:
                return list(right)
            if not right:
                return list(left)
            left_sigs = {signature(s.labels) for s in left}
            return list(left) + [s for s in right if signature(s.labels) not in left_sigs]
        if op == "unless":
            if not left or not right:
                return list(left)
            right_sigs = {signature(s.labels) for s in right}
            return [s for s in left if signature(s.labels) not in right_sigs]
        return _vector_binop(op, left, right, card, on, matching_labels, include, return_bool, signature)


def _signature_func(on: bool, names: list[str]) -> Callable[[Labels], tuple[tuple[str, str], ...]]:
    if on:
        wanted = sorted(set(names))
        return lambda labels: tuple((n, labels[n]) for n in wanted if labels.get(n, ""))
    dropped = set(names) | {NAME}
    return lambda labels: tuple(sorted((k, v) for k, v in labels.items() if k not in dropped))


def _check_unique(vector: Vector) -> None:
    seen = set()
    for sample in vector:
        key = labels_key(sample.labels)
        if key in seen:
            raise PromQLError("vector cannot contain metrics with the same labelset")
        seen.add(key)


def _vector_scalar(op: str, vector: Vector, scalar: float, swap: bool, return_bool: bool) -> Vector:
    out = []
    drop = op in _DROPS_NAME or return_bool
    for sample in vector:
        lv, rv = (scalar, sample.value) if swap else (sample.value, scalar)
        value, keep = _elem_binop(op, lv, rv)
        if op in _COMPARISON and swap:
            value = rv
        if return_bool:
            value = 1.0 if keep else 0.0
            keep = True
        if keep:
            out.append(Sample(drop_name(sample.labels) if drop else sample.labels, value, sample.t))
    if drop:
        _check_unique(out)
    return out


def _vector_binop(op: str, lhs: Vector, rhs: Vector, card: str, on: bool, matching: list[str], include: list[str],
                  return_bool: bool, signature: Callable[[Labels], tuple[tuple[str, str], ...]]) -> Vector:
    if not lhs or not rhs:
        return []
    if card == "OneToMany":
        lhs, rhs = rhs, lhs
    right_sigs: dict[tuple[tuple[str, str], ...], Sample] = {}
    for sample in rhs:
        sig = signature(sample.labels)
        if sig in right_sigs:
            one_side = "left" if card == "OneToMany" else "right"
            raise PromQLError(
                f"found duplicate series for the match group {_format_labels(dict(sig))} on the {one_side} hand-side "
                f"of the operation: [{_format_labels(sample.labels)}, {_format_labels(right_sigs[sig].labels)}];"
                "many-to-many matching not allowed: matching labels must be unique on one side")
        right_sigs[sig] = sample
    matched: dict[tuple[tuple[str, str], ...], set[tuple[tuple[str, str], ...]] | None] = {}
    out = []
    for sample in lhs:
        sig = signature(sample.labels)
        other = right_sigs.get(sig)
        if other is None:
            continue
        vl, vr = sample.value, other.value
        if card == "OneToMany":
            vl, vr = vr, vl
        value, keep = _elem_binop(op, vl, vr)
        if return_bool:
            value = 1.0 if keep else 0.0
        elif not keep:
            continue
        metric = _result_metric(sample.labels, other.labels, op, card, on, matching, include)
        if return_bool:
            metric = drop_name(metric)
        if card == "OneToOne":
            if sig in matched:
                raise PromQLError("multiple matches for labels: many-to-one matching must be explicit "
                                  "(group_left/group_right)")
            matched[sig] = None
        else:
            inserted = matched.get(sig)
            if inserted is None:
                inserted = set()
                matched[sig] = inserted
            key = labels_key(metric)
            if key in inserted:
                raise PromQLError("multiple matches for labels: grouping labels must ensure unique matches")
            inserted.add(key)
        out.append(Sample(metric, value))
    return out


def _result_metric(lhs: Labels, rhs: Labels, op: str, card: str, on: bool, matching: list[str],
                   include: list[str]) -> Labels:
    result = dict(lhs)
    if op in _DROPS_NAME:
        result.pop(NAME, None)
    if card == "OneToOne":
        if on:
            result = {k: v for k, v in result.items() if k in matching}
        else:
            for name in matching:
                result.pop(name, None)
    for name in include:
        value = rhs.get(name, "")
        if value:
            result[name] = value
        else:
            result.pop(name, None)
    return result


# ---- formatting (Prometheus's JSON) ---------------------------------------------------------------------


def format_value(value: float) -> str:
    return go_format_f(value)


def _format_labels(labels: Labels) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _seconds(ms: int) -> float | int:
    return ms / 1000 if ms % 1000 else ms // 1000


# ---- public API -----------------------------------------------------------------------------------------


def evaluate(storage: Any, node_or_text: Any, at_seconds: float,
             lookback_seconds: float = 300.0, cache: dict[Any, Any] | None = None) -> Value:
    """Evaluate an expression (text or parsed node) at one instant; returns the raw Value.

    `cache`: a dict shared by evaluations of one tick over unchanged data (the rule manager passes one per
    group evaluation), so a selector or range function several rules use is computed once."""
    node = parse(node_or_text) if isinstance(node_or_text, str) else node_or_text
    ts = round(at_seconds * 1000)
    try:
        return Evaluator(as_storage(storage), ts, round(lookback_seconds * 1000), cache=cache).eval(node)
    except (ZeroDivisionError, OverflowError) as exc:  # never expected: arithmetic follows Go's IEEE rules
        raise PromQLError(f"evaluation failed: {exc}") from exc


def instant_vector(storage: Any, node_or_text: Any, at_seconds: float,
                   lookback_seconds: float = 300.0, cache: dict[Any, Any] | None = None) -> list[tuple[Labels, float]]:
    """An expression as (labels, value) pairs: a scalar becomes one sample with no labels (as rules do)."""
    value = evaluate(storage, node_or_text, at_seconds, lookback_seconds, cache)
    if isinstance(value, Scalar):
        return [({}, value.value)]
    if isinstance(value, list) and (not value or isinstance(value[0], Sample)):
        return [(s.labels, s.value) for s in value]  # type: ignore[union-attr]
    raise PromQLError("rule result is not a vector or scalar")


def query_instant(store: Any, text: str, at_seconds: float, lookback_seconds: float = 300.0) -> dict[str, Any]:
    """Prometheus's /api/v1/query `data`: {"resultType", "result"}."""
    ts = round(at_seconds * 1000)
    value = evaluate(store, text, at_seconds, lookback_seconds)
    stamp = _seconds(ts)
    if isinstance(value, Scalar):
        return {"resultType": "scalar", "result": [stamp, format_value(value.value)]}
    if isinstance(value, String):
        return {"resultType": "string", "result": [stamp, value.value]}
    if value and isinstance(value[0], tuple):
        matrix: Matrix = value  # type: ignore[assignment]
        return {"resultType": "matrix", "result": [
            {"metric": labels, "values": [[_seconds(t), format_value(v)] for t, v in points]}
            for labels, points in sorted(matrix, key=lambda item: labels_key(item[0]))]}
    vector: Vector = value  # type: ignore[assignment]
    return {"resultType": "vector", "result": [
        {"metric": s.labels, "value": [stamp, format_value(s.value)]} for s in vector]}


def query_range(store: Any, text: str, start_seconds: float, end_seconds: float, step_seconds: float,
                lookback_seconds: float = 300.0) -> dict[str, Any]:
    """Prometheus's /api/v1/query_range `data`: a matrix with one point per step where the series exists."""
    node = parse(text)
    if step_seconds <= 0:
        raise PromQLError("zero or negative query resolution step widths are not accepted")
    start, end, step = round(start_seconds * 1000), round(end_seconds * 1000), round(step_seconds * 1000)
    storage = as_storage(store)
    lookback = round(lookback_seconds * 1000)
    series: dict[tuple[tuple[str, str], ...], tuple[Labels, list[list[Any]]]] = {}
    ts = start
    while ts <= end:
        value = Evaluator(storage, ts, lookback, start, end).eval(node)
        stamp = _seconds(ts)
        if isinstance(value, Scalar):
            series.setdefault((), ({}, []))[1].append([stamp, format_value(value.value)])
        elif isinstance(value, String):
            raise PromQLError("invalid expression type \"string\" for range query, must be Scalar or instant Vector")
        elif value and isinstance(value[0], tuple):
            raise PromQLError("invalid expression type \"range vector\" for range query, must be Scalar or instant "
                              "Vector")
        else:
            for s in value:  # type: ignore[union-attr]
                key = labels_key(s.labels)  # type: ignore[union-attr]
                series.setdefault(key, (s.labels, []))[1].append([stamp, format_value(s.value)])  # type: ignore[union-attr]
        ts += step
    return {"resultType": "matrix", "result": [
        {"metric": labels, "values": values} for _, (labels, values) in sorted(series.items())]}


__all__ = ["PromQLError", "Storage", "StoreStorage", "aggregate", "bucket_quantile", "check_expr", "evaluate",
           "format_value", "instant_vector", "parse", "query_instant", "query_range", "quantile_of",
           "SUPPORTED_FUNCTIONS"]
