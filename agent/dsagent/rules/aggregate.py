"""PromQL aggregations and quantiles, as Prometheus 2.42's engine.go aggregation() and quantile.go compute them.

Why separate: the operators' semantics (grouping by/without, topk ties through Go's container/heap, the
incremental mean, histogram bucket interpolation) are the part promtool's differential tests probe most.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dsagent.rules.gomath import go_div, go_format_f
from dsagent.rules.values import NAME, PromQLError, Sample, Vector

SUPPORTED_AGGREGATIONS = {"sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "group",
                          "stddev", "stdvar", "count_values"}


def quantile_of(q: float, values: list[float]) -> float:
    """Prometheus's quantile(): linear interpolation between the closest ranks (q*(n-1))."""
    if not values or math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(values, key=lambda v: (not math.isnan(v), v))  # NaN sorts first, as in Go's Less
    n = float(len(ordered))
    rank = q * (n - 1)
    lower = max(0.0, math.floor(rank))
    upper = min(n - 1, lower + 1)
    weight = rank - math.floor(rank)
    return ordered[int(lower)] * (1 - weight) + ordered[int(upper)] * weight


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """bucketQuantile from promql/quantile.go: buckets are (upper bound, cumulative count)."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets = sorted(buckets, key=lambda b: b[0])
    if not math.isinf(buckets[-1][0]) or buckets[-1][0] < 0:
        return math.nan
    coalesced: list[list[float]] = []
    for upper, count in buckets:  # coalesceBuckets: equal bounds add up
        if coalesced and coalesced[-1][0] == upper:
            coalesced[-1][1] += count
        else:
            coalesced.append([upper, count])
    highest = coalesced[0][1]  # ensureMonotonic
    for bucket in coalesced[1:]:
        if bucket[1] > highest:
            highest = bucket[1]
        elif bucket[1] < highest:
            bucket[1] = highest
    if len(coalesced) < 2:
        return math.nan
    observations = coalesced[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(coalesced) - 1) if coalesced[i][1] >= rank), len(coalesced) - 1)
    if b == len(coalesced) - 1:
        return coalesced[-2][0]
    if b == 0 and coalesced[0][0] <= 0:
        return coalesced[0][0]
    bucket_start = 0.0
    bucket_end, count = coalesced[b]
    if b > 0:
        bucket_start = coalesced[b - 1][0]
        count -= coalesced[b - 1][1]
        rank -= coalesced[b - 1][1]
    return bucket_start + (bucket_end - bucket_start) * go_div(rank, count)


def _go_heap_less(a: Sample, b: Sample) -> bool:
    if math.isnan(a.value) and not math.isnan(b.value):
        return True
    return a.value < b.value


class _GoHeap:
    """container/heap as Go implements it, so topk/bottomk keep the same series as Prometheus on ties."""

    def __init__(self, less: Callable[[Sample, Sample], bool], first: Sample) -> None:
        self.items = [first]
        self.less = less

    def _up(self, j: int) -> None:
        while True:
            i = (j - 1) // 2
            if i == j or j <= 0 or not self.less(self.items[j], self.items[i]):
                break
            self.items[i], self.items[j] = self.items[j], self.items[i]
            j = i

    def _down(self, i0: int, n: int) -> bool:
        i = i0
        while True:
            j1 = 2 * i + 1
            if j1 >= n or j1 < 0:
                break
            j = j1
            j2 = j1 + 1
            if j2 < n and self.less(self.items[j2], self.items[j1]):
                j = j2
            if not self.less(self.items[j], self.items[i]):
                break
            self.items[i], self.items[j] = self.items[j], self.items[i]
            i = j
        return i > i0

    def push(self, sample: Sample) -> None:
        self.items.append(sample)
        self._up(len(self.items) - 1)

    def pop(self) -> Sample:
        n = len(self.items) - 1
        self.items[0], self.items[n] = self.items[n], self.items[0]
        self._down(0, n)
        return self.items.pop()


def aggregate(op: str, vector: Vector, grouping: list[str], without: bool, param: Any) -> Vector:
    """Prometheus's aggregation over an instant vector (engine.go aggregation())."""
    k = 0
    if op in ("topk", "bottomk"):
        if param is None or not isinstance(param, float) or math.isnan(param) or abs(param) >= 2 ** 63:
            raise PromQLError(f"Scalar value {param} overflows int64")
        k = int(param)
        if k < 1:
            return []
    if op == "count_values":
        import re

        if not isinstance(param, str) or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", param):
            raise PromQLError(f"invalid label name {param!r}")
        if not without:
            grouping = sorted([*grouping, param])
    grouping_set = set(grouping)
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    order: list[dict[str, Any]] = []
    for sample in vector:
        metric = sample.labels
        if op == "count_values":
            metric = {**metric, param: go_format_f(sample.value)}
        if without:
            key = tuple(sorted((n, v) for n, v in metric.items() if n not in grouping_set and n != NAME))
        else:
            key = tuple(sorted((n, v) for n, v in metric.items() if n in grouping_set))
        group = groups.get(key)
        value = sample.value
        if group is None:
            if without:
                labels = {n: v for n, v in metric.items() if n not in grouping_set and n != NAME}
            elif grouping:
                labels = {n: v for n, v in metric.items() if n in grouping_set}
            else:
                labels = {}
            group = {"labels": labels, "value": value, "mean": value, "count": 1}
            if op in ("stddev", "stdvar"):
                group["value"] = 0.0
            elif op == "topk":
                group["heap"] = _GoHeap(_go_heap_less, Sample(sample.labels, value))
            elif op == "bottomk":
                group["heap"] = _GoHeap(lambda a, b: _go_heap_less(b, a), Sample(sample.labels, value))
            elif op == "quantile":
                group["values"] = [value]
            elif op == "group":
                group["value"] = 1.0
            groups[key] = group
            order.append(group)
            continue
        if op == "sum":
            group["value"] += value
        elif op == "avg":
            group["count"] += 1
            mean = group["mean"]
            if math.isinf(mean):
                if math.isinf(value) and (mean > 0) == (value > 0):
                    continue
                if not math.isinf(value) and not math.isnan(value):
                    continue
            group["mean"] = mean + (value / group["count"] - mean / group["count"])
        elif op == "max":
            if group["value"] < value or math.isnan(group["value"]):
                group["value"] = value
        elif op == "min":
            if group["value"] > value or math.isnan(group["value"]):
                group["value"] = value
        elif op in ("count", "count_values"):
            group["count"] += 1
        elif op in ("stddev", "stdvar"):
            group["count"] += 1
            delta = value - group["mean"]
            group["mean"] += delta / group["count"]
            group["value"] += delta * (value - group["mean"])
        elif op in ("topk", "bottomk"):
            heap: _GoHeap = group["heap"]
            top = heap.items[0].value
            better = top < value if op == "topk" else top > value
            if len(heap.items) < k or better or math.isnan(top):
                if len(heap.items) == k:
                    if k == 1:
                        heap.items[0] = Sample(sample.labels, value)
                        continue
                    heap.pop()
                heap.push(Sample(sample.labels, value))
        elif op == "quantile":
            group["values"].append(value)
    out: Vector = []
    for group in order:
        if op in ("topk", "bottomk"):
            items = group["heap"].items
            items_sorted = sorted(items, key=lambda s: (not math.isnan(s.value), s.value), reverse=op == "topk")
            out.extend(Sample(s.labels, s.value) for s in items_sorted)
            continue
        if op == "avg":
            value = group["mean"]
        elif op in ("count", "count_values"):
            value = float(group["count"])
        elif op == "stdvar":
            value = group["value"] / group["count"]
        elif op == "stddev":
            value = math.sqrt(group["value"] / group["count"])
        elif op == "quantile":
            value = quantile_of(float(param), group["values"])
        else:
            value = group["value"]
        out.append(Sample(group["labels"], value))
    return out
