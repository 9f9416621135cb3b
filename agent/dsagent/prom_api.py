"""Prometheus's HTTP query API over the agent's store: /api/v1/query, /query_range, /series, /labels,
/label/<name>/values, /rules, /alerts (and /status/buildinfo, which Grafana asks first).

Why it exists: the agent's live page and Grafana's Prometheus data source read the node through one
well-known protocol, so nothing needs a second query language or a second server. Paths, parameters
(`time`, `start`, `end`, `step` as unix seconds or RFC 3339; durations as `15s`/`1m` or seconds; GET query
string or POST form body) and the `{status, data}` / `{status: error, errorType, error}` envelopes follow
https://prometheus.io/docs/prometheus/latest/querying/api/.

Expressions go to the rules package's PromQL evaluator (`dsagent.rules.promql`) when it is installed; until
then a small fallback here evaluates what it can answer exactly - a selector with label matchers, as an
instant vector, a range vector (`foo[5m]`, instant queries only) or, over a range, one point per step -
plus number and string literals, and refuses anything else with Prometheus's `bad_data` error.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from dsagent.store import LabelMatcher, TimeSeriesStore

log = logging.getLogger(__name__)

DEFAULT_LOOKBACK_SECONDS = 300.0  # Prometheus's --query.lookback-delta default
MAX_POINTS_PER_SERIES = 11_000  # Prometheus refuses finer range queries with the same message
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|y|w|d|h|m|s)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_MATCH_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


class BadData(ValueError):
    """A request Prometheus would answer with 400 and errorType bad_data."""


# ---- parameters ------------------------------------------------------------------------------------


def parse_time(text: str, name: str) -> float:
    """Unix seconds (float) or RFC 3339, as Prometheus accepts for time/start/end."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp') from None


def parse_duration(text: str, name: str) -> float:
    """Seconds as a float ("15", "0.5") or a Prometheus duration ("15s", "1m30s", "500ms")."""
    try:
        seconds = float(text)
    except ValueError:
        position, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
            position = match.end()
        if position != len(text) or not text:
            raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid duration') from None
    if not math.isfinite(seconds):
        raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid duration')
    return seconds


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (Go's FormatFloat 'f', -1): "1", "0.25", "NaN", "+Inf"."""
    text = repr(float(value))
    if "e" not in text and "n" not in text:  # plain digits: the shortest repr, without a trailing ".0"
        return text[:-2] if text.endswith(".0") else text
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return format(Decimal(text).normalize(), "f")


def format_time(seconds: float) -> float:
    """Prometheus timestamps have millisecond resolution and are written as float seconds."""
    return round(seconds * 1000.0) / 1000.0


# ---- the fallback evaluator: selectors only ----------------------------------------------------------


def _parse(text: str) -> Any:
    import promql_parser

    if not text.strip():
        raise BadData("invalid parameter \"query\": empty query")
    try:
        return promql_parser.parse(text)
    except ValueError as exc:
        raise BadData(f'invalid parameter "query": 1:1: parse error: {exc}') from None


def _selector_parts(selector: Any) -> tuple[str | None, list[LabelMatcher], float]:
    """(metric name, matchers, offset seconds) of a promql_parser VectorSelector."""
    if getattr(selector, "at", None) is not None:
        raise BadData("the @ modifier needs the PromQL evaluator (dsagent.rules), which is not installed")
    matchers = []
    for matcher in selector.matchers.matchers:
        op = _MATCH_OPS[str(matcher.op).rsplit(".", 1)[-1]]
        matchers.append(LabelMatcher(matcher.name, op, matcher.value))  # type: ignore[arg-type]
    offset = selector.offset
    return selector.name or None, matchers, offset.total_seconds() if isinstance(offset, timedelta) else 0.0


def _unwrap(expr: Any) -> Any:
    import promql_parser

    while isinstance(expr, promql_parser.ParenExpr):
        expr = expr.expr
    return expr


def _refuse(expr: Any) -> BadData:
    kind = type(expr).__name__
    return BadData(f"{kind} expressions need the PromQL evaluator (dsagent.rules), which is not installed; "
                   "this agent answers selectors with label matchers (foo{a=\"b\"}, foo[5m]) and literals")


def _metric(name: str, labels: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {"__name__": name, **dict(labels)}


def fallback_query_instant(store: TimeSeriesStore, text: str, at_seconds: float,
                           lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS) -> dict[str, Any]:
    """Prometheus's instant-query `data` for a selector, a range selector or a literal; else BadData."""
    import promql_parser

    expr = _unwrap(_parse(text))
    if isinstance(expr, promql_parser.NumberLiteral):
        return {"resultType": "scalar", "result": [format_time(at_seconds), format_value(expr.val)]}
    if isinstance(expr, promql_parser.StringLiteral):
        return {"resultType": "string", "result": [format_time(at_seconds), expr.val]}
    if isinstance(expr, promql_parser.VectorSelector):
        name, matchers, offset = _selector_parts(expr)
        samples = store.instant_query(name, matchers, at_seconds - offset, lookback_seconds)
        return {"resultType": "vector", "result": [
            {"metric": _metric(s.name, s.labels), "value": [format_time(at_seconds), format_value(s.value)]}
            for s in samples]}
    if isinstance(expr, promql_parser.MatrixSelector):
        name, matchers, offset = _selector_parts(expr.vector_selector)
        end = at_seconds - offset
        # [end - range, end], both ends included, as Prometheus 2.x (and dsagent.rules.promql) select
        windows = store.range_query(name, matchers, end - expr.range.total_seconds(), end)
        return {"resultType": "matrix", "result": [
            {"metric": _metric(w.name, w.labels), "values": [[format_time(t), format_value(v)] for t, v in w.points]}
            for w in windows]}
    raise _refuse(expr)


def fallback_query_range(store: TimeSeriesStore, text: str, start_seconds: float, end_seconds: float,
                         step_seconds: float, lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS) -> dict[str, Any]:
    """Prometheus's range-query `data` (a matrix) for a selector or a number literal; else BadData."""
    import promql_parser

    expr = _unwrap(_parse(text))
    steps = _step_times(start_seconds, end_seconds, step_seconds)
    if isinstance(expr, promql_parser.NumberLiteral):
        value = format_value(expr.val)
        return {"resultType": "matrix", "result": [{"metric": {}, "values": [[format_time(t), value] for t in steps]}]}
    if isinstance(expr, promql_parser.MatrixSelector):
        raise BadData("invalid expression type \"range vector\" for range query, must be Scalar or instant Vector")
    if not isinstance(expr, promql_parser.VectorSelector):
        raise _refuse(expr)
    name, matchers, offset = _selector_parts(expr)
    windows = store.range_query(name, matchers, start_seconds - offset - lookback_seconds, end_seconds - offset)
    result = []
    for window in windows:
        values = []
        times = [t for t, _ in window.points]
        for step_time in steps:
            at = step_time - offset
            index = bisect.bisect_right(times, at) - 1
            if index >= 0 and times[index] >= at - lookback_seconds:
                values.append([format_time(step_time), format_value(window.points[index][1])])
        if values:
            result.append({"metric": _metric(window.name, window.labels), "values": values})
    return {"resultType": "matrix", "result": result}


def _step_times(start_seconds: float, end_seconds: float, step_seconds: float) -> list[float]:
    count = int(math.floor((end_seconds - start_seconds) / step_seconds + 1e-9)) + 1
    return [start_seconds + i * step_seconds for i in range(count)]


def _evaluators() -> tuple[Callable[..., dict[str, Any]], Callable[..., dict[str, Any]], tuple[type[Exception], ...]]:
    """The rules package's PromQL evaluator when installed, else the selector-only fallback."""
    try:
        from dsagent.rules.promql import PromQLError, query_instant, query_range
    except ImportError:
        return fallback_query_instant, fallback_query_range, (BadData,)
    return query_instant, query_range, (PromQLError, BadData)


def instant_query_data(store: TimeSeriesStore, text: str, at_seconds: float,
                       lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS) -> dict[str, Any]:
    """One instant query's `data` through the same evaluator as /api/v1/query (raises ValueError)."""
    instant, _, _ = _evaluators()
    return instant(store, text, at_seconds, lookback_seconds=lookback_seconds)


# ---- selection for /series and /labels -----------------------------------------------------------------


def _selected_keys(store: TimeSeriesStore, selectors: list[str], start: float | None,
                   end: float | None) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    import promql_parser

    keys: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for text in selectors or ['{__name__=~".+"}']:
        expr = _unwrap(_parse(text))
        if not isinstance(expr, promql_parser.VectorSelector):
            raise BadData(f'invalid parameter "match[]": {text!r} is not a series selector')
        name, matchers, _ = _selector_parts(expr)
        if start is None and end is None:
            keys.update(store.series(name, matchers))
        else:
            windows = store.range_query(name, matchers, -math.inf if start is None else start,
                                        math.inf if end is None else end)
            keys.update((window.name, window.labels) for window in windows)
    return sorted(keys)


# ---- the router ----------------------------------------------------------------------------------------


def _ok(data: Any, warnings: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": "success", "data": data}
    if warnings:
        body["warnings"] = warnings
    return JSONResponse(body)


def error_response(error_type: str, message: str, status_code: int = 400) -> JSONResponse:
    """Prometheus's error envelope."""
    return JSONResponse({"status": "error", "errorType": error_type, "error": message}, status_code=status_code)


async def _params(request: Request) -> dict[str, list[str]]:
    """Query-string and (for POST) form-body parameters, each possibly repeated (match[])."""
    params: dict[str, list[str]] = {}
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        body = (await request.body()).decode("utf-8", errors="replace")
        pairs += parse_qsl(body, keep_blank_values=True)
    for key, value in pairs:
        params.setdefault(key, []).append(value)
    return params


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def build_prom_router(store: TimeSeriesStore, rule_manager: Callable[[], Any] | None = None,
                      clock: Callable[[], float] | None = None,
                      lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS) -> APIRouter:
    """The /api/v1 routes. rule_manager returns the rules package's manager (or None while none runs)."""
    import time

    now = clock or time.time
    router = APIRouter()

    def handle(compute: Callable[[dict[str, list[str]]], JSONResponse]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            params = await _params(request)
            try:
                return compute(params)
            except BadData as exc:
                return error_response("bad_data", str(exc))
            except Exception as exc:  # PromQLError from the evaluator, or a bug: answer in the API's form
                if isinstance(exc, ValueError):
                    return error_response("bad_data", str(exc))
                log.exception("Prometheus API request failed")
                return error_response("execution", f"{type(exc).__name__}: {exc}", 422)

        return endpoint

    def query(params: dict[str, list[str]]) -> JSONResponse:
        text = _one(params, "query")
        if text is None:
            raise BadData('invalid parameter "query": missing')
        at_text = _one(params, "time")
        at = parse_time(at_text, "time") if at_text else now()
        instant, _, errors = _evaluators()
        try:
            return _ok(instant(store, text, at, lookback_seconds=lookback_seconds))
        except errors as exc:
            raise BadData(str(exc)) from None

    def query_range(params: dict[str, list[str]]) -> JSONResponse:
        text = _one(params, "query")
        if text is None:
            raise BadData('invalid parameter "query": missing')
        for name in ("start", "end", "step"):
            if not _one(params, name):
                raise BadData(f'invalid parameter "{name}": missing')
        start = parse_time(_one(params, "start") or "", "start")
        end = parse_time(_one(params, "end") or "", "end")
        step = parse_duration(_one(params, "step") or "", "step")
        if end < start:
            raise BadData('invalid parameter "end": end timestamp must not be before start time')
        if step <= 0:
            raise BadData('invalid parameter "step": zero or negative query resolution step widths are not '
                          "accepted. Try a positive integer")
        if (end - start) / step > MAX_POINTS_PER_SERIES:
            raise BadData("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the "
                          "query resolution (?step=XX)")
        _, ranged, errors = _evaluators()
        try:
            return _ok(ranged(store, text, start, end, step, lookback_seconds=lookback_seconds))
        except errors as exc:
            raise BadData(str(exc)) from None

    def _range(params: dict[str, list[str]]) -> tuple[float | None, float | None]:
        start_text, end_text = _one(params, "start"), _one(params, "end")
        return (parse_time(start_text, "start") if start_text else None,
                parse_time(end_text, "end") if end_text else None)

    def series(params: dict[str, list[str]]) -> JSONResponse:
        selectors = params.get("match[]", [])
        if not selectors:
            raise BadData("no match[] parameter provided")
        start, end = _range(params)
        return _ok([_metric(name, labels) for name, labels in _selected_keys(store, selectors, start, end)])

    def labels(params: dict[str, list[str]]) -> JSONResponse:
        start, end = _range(params)
        names = {"__name__"}
        for _, label_set in _selected_keys(store, params.get("match[]", []), start, end):
            names.update(key for key, _ in label_set)
        return _ok(sorted(names))

    def label_values(name: str, params: dict[str, list[str]]) -> JSONResponse:
        start, end = _range(params)
        values = set()
        for metric_name, label_set in _selected_keys(store, params.get("match[]", []), start, end):
            if name == "__name__":
                values.add(metric_name)
            else:
                values.update(value for key, value in label_set if key == name)
        return _ok(sorted(values))

    def rules(_params: dict[str, list[str]]) -> JSONResponse:
        manager = rule_manager() if rule_manager else None
        if manager is None:
            return _ok({"groups": []})
        return _ok(manager.prometheus_rules())

    def alerts(_params: dict[str, list[str]]) -> JSONResponse:
        manager = rule_manager() if rule_manager else None
        if manager is None:
            return _ok({"alerts": []})
        return _ok(manager.prometheus_alerts())

    def metadata(params: dict[str, list[str]]) -> JSONResponse:
        """Per metric name: type, help and unit from the sources' metadata table (Grafana's metric browser)."""
        from dsagent.sources.metric_metadata import metadata_for

        wanted = _one(params, "metric")
        result: dict[str, list[dict[str, str]]] = {}
        for name in store.names():
            if wanted is not None and name != wanted:
                continue
            meta = metadata_for(name)
            latest = store.latest(name) if meta is None else []
            kind = meta.kind if meta is not None else (latest[0].kind if latest else "unknown")
            result[name] = [{"type": kind,
                             "help": meta.description if meta is not None else "",
                             "unit": meta.unit if meta is not None else ""}]
        return _ok(result)

    def exemplars(_params: dict[str, list[str]]) -> JSONResponse:
        return _ok([])  # the store keeps no exemplars

    def buildinfo(_params: dict[str, list[str]]) -> JSONResponse:
        from dsagent import __version__

        return _ok({"version": "2.53.0", "revision": f"dsagent-{__version__}", "branch": "dsagent",
                    "buildUser": "dsagent", "buildDate": "", "goVersion": "none (dsagent, Python)"})

    methods = ["GET", "POST"]
    router.add_api_route("/api/v1/query", handle(query), methods=methods)
    router.add_api_route("/api/v1/query_range", handle(query_range), methods=methods)
    router.add_api_route("/api/v1/series", handle(series), methods=methods)
    router.add_api_route("/api/v1/labels", handle(labels), methods=methods)

    async def label_values_endpoint(name: str, request: Request) -> JSONResponse:
        params = await _params(request)
        try:
            return label_values(name, params)
        except BadData as exc:
            return error_response("bad_data", str(exc))

    router.add_api_route("/api/v1/label/{name}/values", label_values_endpoint, methods=["GET"])
    router.add_api_route("/api/v1/rules", handle(rules), methods=["GET"])
    router.add_api_route("/api/v1/alerts", handle(alerts), methods=["GET"])
    router.add_api_route("/api/v1/status/buildinfo", handle(buildinfo), methods=["GET"])
    router.add_api_route("/api/v1/metadata", handle(metadata), methods=["GET"])
    router.add_api_route("/api/v1/query_exemplars", handle(exemplars), methods=["GET", "POST"])
    return router
