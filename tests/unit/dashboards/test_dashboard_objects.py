"""The packaged Kibana objects: the committed NDJSON is current, parses, and passes every static check
(fields exist in the index templates with fitting types, references resolve, the grid fits, ids are
unique and stable); and the checks themselves catch each kind of mistake they claim to."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from dsagent.dashboards import catalog, check, ndjson

from tests.conftest import REPO_ROOT

COMMITTED = REPO_ROOT / "dashboards" / "dsagent.ndjson"


def objects() -> list[dict[str, Any]]:
    return ndjson.loads(ndjson.dumps(catalog.saved_objects()))


def test_committed_ndjson_is_what_the_catalog_builds() -> None:
    assert COMMITTED.read_text() == ndjson.dumps(catalog.saved_objects()), (
        "dashboards/dsagent.ndjson is stale: run `dsagent dashboards export -o dashboards/dsagent.ndjson`")


def test_committed_ndjson_parses_one_saved_object_per_line() -> None:
    lines = [line for line in COMMITTED.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all({"type", "id", "attributes", "references"} <= set(obj) for obj in parsed)
    kinds = [obj["type"] for obj in parsed]
    assert kinds.count("dashboard") == 4 and kinds.count("index-pattern") == 3


def test_every_static_check_passes_on_the_packaged_objects() -> None:
    report = check.check_objects(objects())
    assert report.problems == []
    assert report.dashboards == 4 and report.panels >= 20 and report.fields >= report.panels


def test_ids_are_stable_and_unique() -> None:
    assert ndjson.dumps(catalog.saved_objects()) == ndjson.dumps(catalog.saved_objects())
    keys = [(obj["type"], obj["id"]) for obj in objects()]
    assert len(keys) == len(set(keys))
    panel_indexes = [panel["panelIndex"] for obj in objects() if obj["type"] == "dashboard"
                     for panel in json.loads(obj["attributes"]["panelsJSON"])]
    assert len(panel_indexes) == len(set(panel_indexes))


def test_dashboards_cover_the_views_the_issue_lists() -> None:
    titles = {obj["id"]: [p["title"] for p in json.loads(obj["attributes"]["panelsJSON"])]
              for obj in objects() if obj["type"] == "dashboard"}
    text = json.dumps(titles).lower()
    for word in ("requests per second", "p99", "slo", "first token", "tokens per second", "error rate",
                 "utilization", "memory used", "temperature", "power", "sm clock", "memory clock", "throttle",
                 "xid", "energy per output token", "latency distribution", "prompt length", "output length",
                 "finish reasons", "slowest", "decisions", "scale events", "knob values", "alerts pending and firing", "decision log"):
        assert word in text, word


def test_normalizing_a_kibana_export_gives_the_same_text() -> None:
    exported = []
    for obj in catalog.saved_objects():
        noisy = {**copy.deepcopy(obj), "updated_at": "2026-01-01T00:00:00Z", "version": "WzEsMV0="}
        if noisy["type"] == "dashboard":  # Kibana re-serializes panelsJSON with its own key order
            panels = json.loads(noisy["attributes"]["panelsJSON"])
            noisy["attributes"]["panelsJSON"] = json.dumps(panels, indent=1)
        noisy["references"] = list(reversed(noisy["references"]))
        exported.append(noisy)
    assert ndjson.dumps(exported) == ndjson.dumps(catalog.saved_objects())


def test_loads_names_the_bad_line(tmp_path: Path) -> None:
    with pytest.raises(ndjson.NdjsonError, match=r"f.ndjson:2: not JSON"):
        ndjson.loads('{"type": "x", "id": "a", "attributes": {}}\n{oops\n', "f.ndjson")
    with pytest.raises(ndjson.NdjsonError, match=r":1: saved object lacks attributes"):
        ndjson.loads('{"type": "x", "id": "a"}\n', "f.ndjson")
    summary = '{"exportedCount": 1, "missingRefCount": 0}\n'
    assert ndjson.loads('{"type": "x", "id": "a", "attributes": {}}\n' + summary) == [
        {"type": "x", "id": "a", "attributes": {}}]


# ---- the checks catch what they claim to ------------------------------------------------------------------


def _dashboard(objs: list[dict[str, Any]], dashboard_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    board = next(obj for obj in objs if obj["id"] == dashboard_id and obj["type"] == "dashboard")
    return board, json.loads(board["attributes"]["panelsJSON"])


def _save(board: dict[str, Any], panels: list[dict[str, Any]]) -> None:
    board["attributes"]["panelsJSON"] = json.dumps(panels)


def _first_column(panel: dict[str, Any], column_id: str = "y0") -> dict[str, Any]:
    layers = panel["embeddableConfig"]["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
    return next(iter(layers.values()))["columns"][column_id]


def _problems_after(mutate) -> list[str]:  # type: ignore[no-untyped-def]
    objs = objects()
    mutate(objs)
    return check.check_objects(objs).problems


def test_check_catches_a_field_missing_from_the_template() -> None:
    def mutate(objs: list[dict[str, Any]]) -> None:
        board, panels = _dashboard(objs, "dsagent-requests")
        _first_column(panels[0], "x")["sourceField"] = "latency_ms"
        _save(board, panels)

    assert any("'latency_ms' is not in the data view's index template" in p for p in _problems_after(mutate))


def test_check_catches_an_aggregation_on_a_field_of_the_wrong_type() -> None:
    def mutate(objs: list[dict[str, Any]]) -> None:
        board, panels = _dashboard(objs, "dsagent-gpu")
        _first_column(panels[0])["sourceField"] = "metric.unit"  # average of a keyword
        _save(board, panels)

    assert any("average needs" in p and "is keyword" in p for p in _problems_after(mutate))


def test_check_catches_a_metric_the_agent_never_emits_and_a_label_it_lacks() -> None:
    def mutate(objs: list[dict[str, Any]]) -> None:
        board, panels = _dashboard(objs, "dsagent-gpu")
        _first_column(panels[0])["filter"]["query"] = 'metric.name : "gpu_util_percent"'
        _first_column(panels[1])["filter"]["query"] = 'metric.name : "dsagent_host_cpu_ratio"'
        _save(board, panels)

    problems = _problems_after(mutate)
    assert any("'gpu_util_percent', which the agent never emits" in p for p in problems)
    assert any("splits by 'labels.gpu_index' but dsagent_host_cpu_ratio" in p for p in problems)


def test_check_catches_overlap_and_overflow_on_the_grid() -> None:
    def mutate(objs: list[dict[str, Any]]) -> None:
        board, panels = _dashboard(objs, "dsagent-fleet-overview")
        panels[1]["gridData"].update(x=10)  # now overlaps panel 0
        panels[2]["gridData"].update(w=60)  # runs past column 48
        _save(board, panels)

    problems = _problems_after(mutate)
    assert any("overlaps" in p for p in problems) and any("48-column grid" in p for p in problems)


def test_check_catches_dangling_layer_and_panel_references() -> None:
    def mutate(objs: list[dict[str, Any]]) -> None:
        board = next(obj for obj in objs if obj["id"] == "dsagent-actions" and obj["type"] == "dashboard")
        for ref in board["references"]:
            if ref["type"] == "search":
                ref["id"] = "no-such-search"
        board["references"] = [ref for ref in board["references"] if "datasource-layer" not in ref["name"]]
        objs[:] = [obj for obj in objs if obj["id"] != "dsagent-requests" or obj["type"] != "index-pattern"]

    problems = _problems_after(mutate)
    assert any("search/no-such-search, which is not in the file" in p for p in problems)
    assert any("reference missing" in p for p in problems)
    assert any("index-pattern/dsagent-requests, which is not in the file" in p for p in problems)


def test_check_catches_duplicate_ids_and_unknown_accessors() -> None:
    def mutate(objs: list[dict[str, Any]]) -> None:
        objs.append(copy.deepcopy(objs[0]))
        board, panels = _dashboard(objs, "dsagent-fleet-overview")
        panels[0]["embeddableConfig"]["attributes"]["state"]["visualization"]["layers"][0]["accessors"].append("y9")
        _save(board, panels)

    problems = _problems_after(mutate)
    assert any("duplicate id" in p for p in problems)
    assert any("accessor 'y9' is not a column" in p for p in problems)


def test_kql_subset_parser() -> None:
    assert check.parse_kql('metric.name : "a" and labels.x : *') == [("metric.name", ":", "a"), ("labels.x", ":", "*")]
    assert check.parse_kql("status_code >= 400") == [("status_code", ">=", "400")]
    with pytest.raises(ValueError):
        check.parse_kql("metric.name : (a or b) and nested { x : 1 }")
