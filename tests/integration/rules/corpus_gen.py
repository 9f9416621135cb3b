"""Writes the differential corpus: rule files + promtool-format test files in tests/integration/rules/corpus/.

Why generated expectations: each case names rules, input series, expressions and alert times; the
expected samples/alerts are what dsagent's runner observes, and the differential test then asks the real
promtool whether it agrees (it must pass the same file). Each case also gets a "mutant" twin with one
expectation changed, which both must fail. Hand-written cases cover each function and operator; the
seeded random cases (`random_cases`) add generated expressions over generated series.

    python tests/integration/rules/corpus_gen.py     # rewrite the corpus (then review the diff)
"""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"

COUNTERS = [
    {"series": 'http_requests_total{job="api", instance="a"}', "values": "0+10x20"},
    {"series": 'http_requests_total{job="api", instance="b"}', "values": "0+7x8 3+5x11"},
    {"series": 'http_requests_total{job="web", instance="c"}', "values": "5 _ 15 _x3 40+4x12"},
]
GAUGES = [
    {"series": 'temp_celsius{gpu="0", node="n1"}', "values": "70 72 75 80 86 88 90 87 84 80 76 74 70 71 72 73 74 75 76 77 78"},
    {"series": 'temp_celsius{gpu="1", node="n1"}', "values": "60+1x20"},
    {"series": 'temp_celsius{gpu="2", node="n2"}', "values": "90-2x20"},
]
HISTOGRAM = [
    {"series": 'lat_seconds_bucket{le="0.05", route="/a"}', "values": "0+1x20"},
    {"series": 'lat_seconds_bucket{le="0.1", route="/a"}', "values": "0+3x20"},
    {"series": 'lat_seconds_bucket{le="0.5", route="/a"}', "values": "0+8x20"},
    {"series": 'lat_seconds_bucket{le="1", route="/a"}', "values": "0+9x20"},
    {"series": 'lat_seconds_bucket{le="+Inf", route="/a"}', "values": "0+10x20"},
    {"series": 'lat_seconds_bucket{le="0.05", route="/b"}', "values": "0+0x20"},
    {"series": 'lat_seconds_bucket{le="0.1", route="/b"}', "values": "0+1x20"},
    {"series": 'lat_seconds_bucket{le="0.5", route="/b"}', "values": "0+2x20"},
    {"series": 'lat_seconds_bucket{le="1", route="/b"}', "values": "0+5x20"},
    {"series": 'lat_seconds_bucket{le="+Inf", route="/b"}', "values": "0+6x20"},
    {"series": 'lat_seconds_sum{route="/a"}', "values": "0+2.5x20"},
    {"series": 'lat_seconds_count{route="/a"}', "values": "0+10x20"},
]
TIMES = ["1m", "5m", "10m", "15m", "20m"]


def case(name: str, exprs: list[str] | None = None, series: list[dict[str, str]] | None = None,
         rules: list[dict[str, Any]] | None = None, alerts: list[tuple[str, str]] | None = None,
         times: list[str] | None = None, interval: str = "1m", evaluation_interval: str | None = None,
         mutate: bool = True) -> dict[str, Any]:
    return {"name": name, "exprs": exprs or [], "series": series or [], "rules": rules or [],
            "alerts": alerts or [], "times": times or TIMES, "interval": interval,
            "evaluation_interval": evaluation_interval, "mutate": mutate}


def handwritten_cases() -> list[dict[str, Any]]:
    cases = [
        case("rate_counters", ["rate(http_requests_total[5m])", "increase(http_requests_total[3m])",
                               "rate(http_requests_total[90s])", "irate(http_requests_total[5m])"], COUNTERS),
        case("delta_gauges", ["delta(temp_celsius[5m])", "idelta(temp_celsius[3m])", "deriv(temp_celsius[5m])",
                              "predict_linear(temp_celsius[5m], 600)"], GAUGES),
        case("over_time", ["avg_over_time(temp_celsius[5m])", "min_over_time(temp_celsius[4m])",
                           "max_over_time(temp_celsius[4m])", "sum_over_time(temp_celsius[3m])",
                           "count_over_time(temp_celsius[5m])", "last_over_time(temp_celsius[2m])",
                           "quantile_over_time(0.9, temp_celsius[6m])", "stddev_over_time(temp_celsius[5m])",
                           "stdvar_over_time(temp_celsius[5m])", "present_over_time(temp_celsius[1m])"], GAUGES),
        case("changes_resets", ["changes(temp_celsius[10m])", "resets(http_requests_total[15m])",
                                "changes(http_requests_total[5m])"], COUNTERS + GAUGES),
        case("histogram_quantile", [
            "histogram_quantile(0.99, rate(lat_seconds_bucket[5m]))",
            "histogram_quantile(0.5, sum by (le) (rate(lat_seconds_bucket[5m])))",
            "histogram_quantile(0.9, sum by (le, route) (increase(lat_seconds_bucket[10m])))",
            "histogram_quantile(0, rate(lat_seconds_bucket[5m]))",
            "histogram_quantile(1, rate(lat_seconds_bucket[5m]))",
            "histogram_quantile(0.75, lat_seconds_bucket)",
        ], HISTOGRAM, times=["5m", "10m", "20m"]),
        case("histogram_mean", ["rate(lat_seconds_sum[5m]) / rate(lat_seconds_count[5m])",
                                "sum(rate(lat_seconds_sum[2m])) / sum(rate(lat_seconds_count[2m]))"], HISTOGRAM),
        case("aggregations", ["sum(temp_celsius)", "avg by (node) (temp_celsius)", "max without (gpu) (temp_celsius)",
                              "min by (node) (temp_celsius)", "count(temp_celsius)", "group by (node) (temp_celsius)",
                              "stddev(temp_celsius)", "stdvar by (node) (temp_celsius)",
                              "quantile(0.5, temp_celsius)", "quantile by (node) (0.25, temp_celsius)"], GAUGES),
        case("topk_bottomk", ["topk(1, temp_celsius)", "bottomk(2, temp_celsius)", "topk by (node) (1, temp_celsius)",
                              "topk(5, temp_celsius)", "bottomk(1, rate(http_requests_total[5m]))"], GAUGES + COUNTERS),
        case("count_values", ['count_values("value", temp_celsius)', 'count_values by (node) ("t", round(temp_celsius / 10))'],
             GAUGES),
        case("arithmetic", ["temp_celsius * 2 + 1", "temp_celsius / 3", "temp_celsius % 7", "2 ^ 3", "-temp_celsius",
                            "temp_celsius - temp_celsius", "(temp_celsius + 10) / 100", "1 / (temp_celsius - temp_celsius)",
                            "temp_celsius ^ 0.5"], GAUGES),
        case("comparisons", ["temp_celsius > 80", "temp_celsius >= 88", "temp_celsius < bool 75", "temp_celsius == 72",
                             "temp_celsius != 70", "80 < temp_celsius", "1 > bool 2", "temp_celsius <= bool temp_celsius"],
             GAUGES),
        case("vector_matching", [
            'http_requests_total / on(job) group_left sum by (job) (http_requests_total)',
            'sum by (job) (rate(http_requests_total[5m])) / on(job) group_right count by (job, instance) (http_requests_total)',
            'temp_celsius * on(node) group_left max by (node) (temp_celsius)',
            'temp_celsius / ignoring(gpu) group_left max by (node) (temp_celsius)',
            'rate(http_requests_total[5m]) > on(job, instance) rate(http_requests_total[5m] offset 2m)',
        ], COUNTERS + GAUGES),
        case("set_operators", ['temp_celsius and temp_celsius > 80', 'temp_celsius or on() vector(1)',
                               'temp_celsius unless on(node) temp_celsius{node="n2"}', 'temp_celsius{gpu="0"} or temp_celsius{gpu="1"}',
                               'temp_celsius > 85 or temp_celsius < 65', 'http_requests_total and ignoring(instance) http_requests_total{instance="a"}'],
             GAUGES + COUNTERS),
        case("math_functions", ["abs(temp_celsius - 80)", "ceil(temp_celsius / 7)", "floor(temp_celsius / 7)",
                                "round(temp_celsius / 7)", "round(temp_celsius, 5)", "sqrt(temp_celsius)",
                                "ln(temp_celsius)", "log2(temp_celsius)", "log10(temp_celsius)", "log2(vector(1024))",
                                "sgn(temp_celsius - 80)", "clamp(temp_celsius, 72, 85)", "clamp_min(temp_celsius, 80)",
                                "clamp_max(temp_celsius, 80)", "clamp(temp_celsius, 90, 80)"], GAUGES),
        case("absent_scalar_vector", ['absent(nonexistent{job="x"})', "absent(temp_celsius)", 'absent_over_time(nope{a="b"}[5m])',
                                      "scalar(temp_celsius)", 'scalar(temp_celsius{gpu="0"})', "vector(3.5)", "time()",
                                      "timestamp(temp_celsius)", 'vector(time()) - on() group_left timestamp(temp_celsius{gpu="1"})'],
             GAUGES),
        case("labels_functions", ['label_replace(temp_celsius, "card", "gpu-$1", "gpu", "(.*)")',
                                  'label_replace(temp_celsius, "node", "", "node", "n1")',
                                  'label_join(temp_celsius, "where", "/", "node", "gpu")',
                                  'sort(temp_celsius)', 'sort_desc(temp_celsius)'], GAUGES),
        case("selectors", ['temp_celsius{node=~"n.*", gpu!="1"}', 'temp_celsius{node!~"n2"}', '{__name__="temp_celsius", gpu="2"}',
                           '{__name__=~"temp.*|http.*", node="n2"}', 'temp_celsius offset 3m', 'http_requests_total offset 90s',
                           'temp_celsius @ 300', 'rate(http_requests_total[5m] @ 600)'], GAUGES + COUNTERS),
        case("lookback_and_staleness", ["short_lived", "last_over_time(short_lived[10m])", "count_over_time(short_lived[10m])",
                                        "ends_stale", "count_over_time(ends_stale[10m])", "gappy"],
             [{"series": 'short_lived{k="v"}', "values": "1 2 3"},
              {"series": 'ends_stale{k="v"}', "values": "1 2 3 stale"},
              {"series": 'gappy{k="v"}', "values": "1 _x6 5 _x3 7"}],
             times=["2m", "4m", "6m", "7m", "8m", "9m", "12m"]),
        case("calendar_and_misc", ["minute()", "hour(vector(7300))", "day_of_week(temp_celsius * 86400)",
                                   "day_of_month(temp_celsius * 86400 * 30)", "day_of_year(temp_celsius * 86400 * 3)",
                                   "days_in_month(temp_celsius * 86400 * 31)", "month(temp_celsius * 86400 * 20)",
                                   "year(temp_celsius * 86400 * 365)", "temp_celsius atan2 2", "-(2 ^ 3) % 5",
                                   "(temp_celsius > bool 80) * temp_celsius", "sort_desc(topk(2, temp_celsius))",
                                   "max_over_time(temp_celsius[5m] offset 1m @ 900)", "vector(1) + on() group_left vector(2)"],
             GAUGES, times=["1m", "7m", "20m"]),
        case("zero_repetitions", ["a", "count_over_time(a[20m])", "count_over_time(b[20m])", "sum_over_time(a[20m])"],
             [{"series": "a", "values": "0x5 1x3"}, {"series": "b", "values": "0x2 _x3 7"}], times=["5m", "8m", "20m"]),
        case("interval_30s", ["rate(http_requests_total[2m])", "irate(http_requests_total[1m])", "avg_over_time(temp_celsius[90s])"],
             COUNTERS + GAUGES, interval="30s", times=["1m", "2m30s", "5m", "9m"]),
        case("interval_15s_eval_30s", ["increase(http_requests_total[1m])", "delta(temp_celsius[45s])"],
             COUNTERS + GAUGES, interval="15s", evaluation_interval="30s", times=["1m", "2m", "4m45s"]),
        case("counter_resets", ["rate(resetting_total[5m])", "increase(resetting_total[10m])", "resets(resetting_total[10m])",
                                "irate(resetting_total[2m])"],
             [{"series": 'resetting_total{i="1"}', "values": "0 10 20 5 15 25 2 4 6 100 0 1 2 3"},
              {"series": 'resetting_total{i="2"}', "values": "50 60 70 80 1 2 3 4 5 6 7 8 9 10"}],
             times=["3m", "5m", "8m", "10m", "13m"]),
    ]
    cases += alert_cases()
    return cases


def alert_cases() -> list[dict[str, Any]]:
    temp_rules = [{"name": "temps", "rules": [
        {"alert": "TooHot", "expr": "temp_celsius > 85", "for": "2m", "labels": {"severity": "critical"},
         "annotations": {"summary": "GPU {{ $labels.gpu }} on {{ $labels.node }} at {{ $value }}C",
                         "human": "{{ $value | humanize }}", "pct": "{{ humanizePercentage 0.123 }}"}},
        {"alert": "Warm", "expr": "temp_celsius > 75", "labels": {"severity": "warning", "gpu": "{{ $labels.gpu }}x"}},
        {"alert": "KeepHot", "expr": "temp_celsius > 87", "keep_firing_for": "3m"},
    ]}]
    latency_rules = [{"name": "latency", "rules": [
        {"record": "route:lat_p99:5m", "expr": "histogram_quantile(0.99, sum by (le, route) (rate(lat_seconds_bucket[5m])))"},
        {"record": "job:http_rate:5m", "expr": "sum by (job) (rate(http_requests_total[5m]))", "labels": {"kind": "recorded"}},
        {"alert": "SlowRoute", "expr": "route:lat_p99:5m > 0.5", "for": "1m",
         "annotations": {"value": "{{ $value | humanizeDuration }}", "printf": "{{ printf \"%.3f\" $value }}"}},
        {"alert": "Traffic", "expr": "job:http_rate:5m > 0.1", "for": "5m", "labels": {"team": "{{ $labels.job }}-team"}},
    ]}]
    hysteresis_rules = [{"name": "hysteresis", "rules": [
        {"alert": "Hot", "expr": 'max by (gpu) (temp_celsius) > 85 or (max by (gpu) (temp_celsius) > 75 and on (gpu) '
                                 'ALERTS{alertname="Hot", alertstate="firing"})'},
        {"record": "alerts:count", "expr": 'count(ALERTS{alertstate="firing"}) or vector(0)'},
    ]}]
    return [
        case("alerts_temp", ["ALERTS", "ALERTS_FOR_STATE", 'ALERTS{alertstate="pending"}'], GAUGES, temp_rules,
             [(name, t) for name in ("TooHot", "Warm", "KeepHot") for t in ("3m", "5m", "6m", "7m", "9m", "10m", "12m", "14m")],
             times=["5m", "7m", "12m"]),
        case("alerts_latency", ["route:lat_p99:5m", "job:http_rate:5m", "ALERTS"], HISTOGRAM + COUNTERS, latency_rules,
             [(name, t) for name in ("SlowRoute", "Traffic") for t in ("2m", "6m", "7m", "10m", "15m")], times=["6m", "10m"]),
        case("alerts_hysteresis", ["alerts:count", 'ALERTS{alertname="Hot"}'], GAUGES, hysteresis_rules,
             [("Hot", t) for t in ("3m", "4m", "6m", "8m", "10m", "11m", "15m")], times=["5m", "9m", "11m"]),
        case("alerts_eval_interval", ["ALERTS"], GAUGES, temp_rules,
             [("TooHot", t) for t in ("4m", "5m30s", "6m", "8m30s")], evaluation_interval="30s", times=["6m"]),
        case("alerts_stale_inputs", ["ALERTS"], [{"series": 'up{job="x"}', "values": "0 0 0 1 1 stale 0 0 0 0 0 0"}],
             [{"name": "up", "rules": [{"alert": "Down", "expr": "up == 0", "for": "2m"},
                                       {"alert": "Missing", "expr": 'absent(up{job="x"})'}]}],
             [(name, t) for name in ("Down", "Missing") for t in ("1m", "2m", "3m", "5m", "6m", "8m", "10m", "11m")],
             times=["3m", "9m"]),
    ]


def error_cases() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, rules, test): files both tools must fail (bad rules, evaluation errors, malformed tests)."""
    series = [{"series": 'm{a="1", b="x"}', "values": "1+1x5"}, {"series": 'm{a="1", b="y"}', "values": "2+1x5"},
              {"series": 'n{a="1"}', "values": "1x5"}]
    many_to_many = {"groups": [{"name": "g", "rules": [{"record": "bad", "expr": "n / on(a) m"}]}]}
    one_to_one = {"groups": [{"name": "g", "rules": [{"record": "bad2", "expr": "m + on(a) n"}]}]}
    dup_labelset = {"groups": [{"name": "g", "rules": [{"record": "dup", "expr": "m", "labels": {"b": "same"}}]}]}
    unknown_field = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "m > 1", "bogus": 1}]}]}
    record_with_for = {"groups": [{"name": "g", "rules": [{"record": "r", "expr": "m", "for": "1m"}]}]}
    parse_error = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum(m"}]}]}
    ok_rules = {"groups": [{"name": "g", "rules": [{"record": "ok", "expr": "sum(m)"}]}]}
    over_limit = {"groups": [{"name": "g", "limit": 1, "rules": [{"record": "two", "expr": "m"}]}]}
    alerts_over_limit = {"groups": [{"name": "g", "limit": 1, "rules": [{"alert": "A", "expr": "m > 0"}]}]}
    within_limit = {"groups": [{"name": "g", "limit": 2, "rules": [{"record": "two", "expr": "m"}]}]}

    def test(extra: dict[str, Any] | None = None) -> dict[str, Any]:
        group = {"interval": "1m", "input_series": series,
                 "promql_expr_test": [{"expr": "sum(m)", "eval_time": "2m", "exp_samples": [{"labels": "{}", "value": 7}]}]}
        group.update(extra or {})
        return {"evaluation_interval": "1m", "tests": [group]}

    return [
        ("err_many_to_many", many_to_many, test()),
        ("err_one_to_one", one_to_one, test()),
        ("err_duplicate_labelset", dup_labelset, test()),
        ("err_unknown_rule_field", unknown_field, test()),
        ("err_record_with_for", record_with_for, test()),
        ("err_parse", parse_error, test()),
        ("err_expr_wrong_value", ok_rules, test({"promql_expr_test": [
            {"expr": "ok", "eval_time": "2m", "exp_samples": [{"labels": 'ok', "value": 8}]}]})),
        ("err_expr_many_to_many_query", ok_rules, test({"promql_expr_test": [
            {"expr": "n * on(a) m", "eval_time": "2m", "exp_samples": []}]})),
        ("err_alert_missing_name", ok_rules, test({"alert_rule_test": [{"eval_time": "1m", "exp_alerts": []}]})),
        ("err_record_over_limit", over_limit, test()),
        ("err_alerts_over_limit", alerts_over_limit, test()),
        ("ok_within_limit", within_limit, test()),
        ("ok_empty_expectations", ok_rules, test({"promql_expr_test": [
            {"expr": "nothing_here", "eval_time": "2m", "exp_samples": []}]})),
    ]


# ---- random cases -------------------------------------------------------------------------------------------

_METRICS = ["rnd_a", "rnd_b", "rnd_c_total"]
_LABELS = [{"inst": "x", "grp": "one"}, {"inst": "y", "grp": "one"}, {"inst": "z", "grp": "two"}]


def _random_values(rng: random.Random, counter: bool) -> str:
    parts = []
    remaining = 24
    while remaining > 0:
        kind = rng.random()
        n = rng.randint(1, 6)
        if kind < 0.15:
            parts.append("_" if n == 1 else f"_x{n}")
        elif counter:
            start = rng.randint(0, 50)
            parts.append(f"{start}+{rng.randint(0, 9)}x{n}")
        elif kind < 0.6:
            parts.append(f"{rng.randint(-20, 100)}{rng.choice(['+', '-'])}{rng.choice([0.5, 1, 2, 3, 0.25])}x{n}")
        else:
            parts.append(" ".join(str(rng.choice([rng.randint(0, 99), round(rng.uniform(0, 10), 2)])) for _ in range(n)))
        remaining -= n + 1
    return " ".join(parts)


def _random_expr(rng: random.Random, depth: int = 0) -> str:
    metric = rng.choice(_METRICS)
    matcher = rng.choice(["", '{grp="one"}', '{inst!="y"}', '{inst=~"x|z"}'])
    window = rng.choice(["1m", "2m", "3m", "5m", "7m", "10m"])
    selector = metric + matcher
    leaves = [
        selector,
        f"rate({metric}{matcher}[{window}])",
        f"increase({metric}{matcher}[{window}])",
        f"delta({selector}[{window}])",
        f"irate({selector}[{window}])",
        f"deriv({selector}[{window}])",
        f"avg_over_time({selector}[{window}])",
        f"max_over_time({selector}[{window}])",
        f"min_over_time({selector}[{window}])",
        f"sum_over_time({selector}[{window}])",
        f"count_over_time({selector}[{window}])",
        f"quantile_over_time({rng.choice([0.1, 0.5, 0.95])}, {selector}[{window}])",
        f"changes({selector}[{window}])",
        f"{selector} offset {rng.choice(['1m', '2m', '30s'])}",
    ]
    expr = rng.choice(leaves)
    if depth < 2:
        roll = rng.random()
        if roll < 0.25:
            op = rng.choice(["sum", "avg", "max", "min", "count"])
            grouping = rng.choice(["", " by (grp)", " without (inst)", " by (inst)"])
            expr = f"{op}{grouping} ({expr})"
        elif roll < 0.45:
            other = _random_expr(rng, depth + 1)
            op = rng.choice(["+", "-", "*", "/", ">", "<", "and", "or", "unless"])
            if op in ("and", "or", "unless"):
                expr = f"({expr}) {op} ({other})"
            else:
                expr = f"sum by (grp) ({expr}) {op} on (grp) sum by (grp) ({other})"
        elif roll < 0.6:
            expr = f"{expr} {rng.choice(['>', '<', '>=', '<=', '=='])} {rng.choice(['bool ', ''])}{rng.randint(0, 60)}"
        elif roll < 0.7:
            expr = f"{rng.choice(['topk', 'bottomk'])}({rng.randint(1, 3)}, {expr})"
        elif roll < 0.8:
            expr = f"{rng.choice(['abs', 'ceil', 'floor', 'sqrt'])}({expr})"
        elif roll < 0.85:
            expr = f"clamp({expr}, {rng.randint(0, 10)}, {rng.randint(10, 80)})"
    return expr


def random_cases(count: int, seed: int = 16) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        series = []
        for metric in _METRICS:
            for labels in rng.sample(_LABELS, rng.randint(1, 3)):
                inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
                series.append({"series": f"{metric}{{{inner}}}", "values": _random_values(rng, metric.endswith("_total"))})
        exprs = [_random_expr(rng) for _ in range(6)]
        alert_expr = _random_expr(rng, 1)
        rules = [{"name": "gen", "rules": [
            {"record": "gen:recorded", "expr": f"sum by (grp) ({_random_expr(rng, 2)})"},
            {"alert": "GenAlert", "expr": f"({alert_expr}) > {rng.randint(0, 40)}", "for": rng.choice(["0s", "1m", "3m"]),
             "annotations": {"v": "{{ $value }}"}},
        ]}]
        times = sorted({f"{rng.randint(1, 24)}m" for _ in range(4)}, key=lambda t: int(t[:-1]))
        cases.append(case(f"gen_{index:02d}", [*exprs, "gen:recorded"], series, rules,
                          [("GenAlert", t) for t in times], times=times))
    return cases


# ---- writing -----------------------------------------------------------------------------------------------


def _test_doc(c: dict[str, Any], rules_file: str) -> dict[str, Any]:
    group: dict[str, Any] = {"interval": c["interval"], "input_series": c["series"]}
    if c["alerts"]:
        group["alert_rule_test"] = [{"eval_time": t, "alertname": name, "exp_alerts": []} for name, t in c["alerts"]]
    if c["exprs"]:
        group["promql_expr_test"] = [{"expr": e, "eval_time": t, "exp_samples": []} for e in c["exprs"] for t in c["times"]]
    doc: dict[str, Any] = {"rule_files": [rules_file]}
    if c["evaluation_interval"]:
        doc["evaluation_interval"] = c["evaluation_interval"]
    doc["tests"] = [group]
    return doc


def _labels_text(labels: dict[str, str]) -> str:
    name = labels.get("__name__", "")
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{inner}}}"


def _fill(doc: dict[str, Any], test_path: Path) -> dict[str, Any] | None:
    """Expectations from what dsagent observes; None when a value cannot be written (NaN, errors)."""
    import math

    from dsagent.rules.testrunner import observe

    test_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    _, observed = observe(test_path)
    others = [observe(test_path, order_seed=seed)[1][0] for seed in range(1, 7)]
    group, seen = doc["tests"][0], observed[0]
    if seen.get("expr_errors"):
        return None
    samples_by_key = seen.get("samples", {})
    kept_tests = []
    for test in group.get("promql_expr_test", []):
        from dsagent.rules.testrunner import _duration_ms

        key = (test["expr"], _duration_ms(test["eval_time"], "t"))
        got = samples_by_key[key]
        if any(math.isnan(v) for _, v in got):
            continue  # NaN never equals NaN in promtool's comparison: not a useful expectation
        if any(got != other.get("samples", {}).get(key) for other in others):
            continue  # depends on the order series were created in, which promtool draws from a Go map
        test["exp_samples"] = [{"labels": _labels_text(lb), "value": v} for lb, v in got]
        kept_tests.append(test)
    if "promql_expr_test" in group:
        group["promql_expr_test"] = kept_tests
    kept_alerts = []
    for test in group.get("alert_rule_test", []):
        from dsagent.rules.testrunner import _duration_ms

        key = (test["alertname"], _duration_ms(test["eval_time"], "t"))
        got = seen.get("alerts", {}).get(key, [])
        if any(got != other.get("alerts", {}).get(key, []) for other in others):
            continue  # an annotation's value depends on series order (see above)
        kept_alerts.append(test)
        test["exp_alerts"] = [{"exp_labels": {k: v for k, v in lb.items() if k != "alertname"}, **(
            {"exp_annotations": an} if an else {})} for lb, an in got]
    if "alert_rule_test" in group:
        group["alert_rule_test"] = kept_alerts
    return doc


def _mutant(doc: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
    mutant = copy.deepcopy(doc)
    group = mutant["tests"][0]
    candidates = [t for t in group.get("promql_expr_test", []) if t["exp_samples"]]
    alert_candidates = [t for t in group.get("alert_rule_test", []) if t["exp_alerts"]]
    if candidates and (not alert_candidates or rng.random() < 0.6):
        test = rng.choice(candidates)
        sample = rng.choice(test["exp_samples"])
        sample["value"] = sample["value"] + rng.choice([1, -0.5, 1e-9 * max(1.0, abs(sample["value"]))])
        return mutant
    if alert_candidates:
        test = rng.choice(alert_candidates)
        test["exp_alerts"] = test["exp_alerts"][1:]
        return mutant
    return None


def write_corpus(random_count: int = 30) -> list[Path]:
    sys.path.insert(0, str(HERE.parents[2] / "agent"))
    CORPUS.mkdir(exist_ok=True)
    for old in CORPUS.glob("*.yaml"):
        old.unlink()
    rng = random.Random(1616)
    written = []
    for c in handwritten_cases() + random_cases(random_count):
        rules_name = f"{c['name']}.rules.yaml"
        (CORPUS / rules_name).write_text(yaml.safe_dump({"groups": c["rules"]}, sort_keys=False), encoding="utf-8")
        test_path = CORPUS / f"{c['name']}_test.yaml"
        doc = _fill(_test_doc(c, rules_name), test_path)
        if doc is None:
            test_path.unlink()
            (CORPUS / rules_name).unlink()
            print(f"skipped {c['name']}: an expression errored", file=sys.stderr)
            continue
        test_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        written.append(test_path)
        mutant = _mutant(doc, rng) if c["mutate"] else None
        if mutant is not None:
            path = CORPUS / f"{c['name']}_mutant_test.yaml"
            path.write_text(yaml.safe_dump(mutant, sort_keys=False), encoding="utf-8")
            written.append(path)
    for name, rules, test in error_cases():
        (CORPUS / f"{name}.rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
        test["rule_files"] = [f"{name}.rules.yaml"]
        path = CORPUS / f"{name}_test.yaml"
        path.write_text(yaml.safe_dump({"rule_files": test.pop("rule_files"), **test}, sort_keys=False), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    files = write_corpus()
    print(f"wrote {len(files)} test files to {CORPUS}")
