"""`dsagent dashboards install|export` against the fake Kibana on loopback (the request is checked the way
Kibana checks it: kbn-xsrf, multipart `file`, overwrite, space path, credentials), and against a real
Kibana when DSAGENT_TEST_KIBANA_URL names one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from dsagent.cli import app
from dsagent.dashboards import catalog, ndjson
from typer.testing import CliRunner

from tests.fakes.kibana import FakeKibana

runner = CliRunner()
PACKAGED = ndjson.dumps(catalog.saved_objects())


def test_install_sends_what_kibana_requires_and_reports_each_object() -> None:
    with FakeKibana(api_key="c2VjcmV0OmtleQ==", spaces=("default", "ops")) as kibana:
        result = runner.invoke(app, ["dashboards", "install", "--kibana-url", kibana.url, "--space", "ops",
                                     "--api-key", "c2VjcmV0OmtleQ=="])
        assert result.exit_code == 0, result.output
        request = kibana.requests[-1]
        assert request.method == "POST" and request.path == "/s/ops/api/saved_objects/_import"
        assert request.query["overwrite"] == ["true"]
        assert request.headers["kbn-xsrf"] == "true"
        assert request.headers["authorization"] == "ApiKey c2VjcmV0OmtleQ=="
        assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
        filename, _content_type, data = request.multipart_files["file"]
        assert filename.endswith(".ndjson") and data.decode() == PACKAGED
        assert len(kibana.objects["ops"]) == 8 and kibana.objects["default"] == {}
        for obj in catalog.saved_objects():
            assert f"{obj['type']:<13} {obj['id']}" in result.stdout
        assert result.stdout.count("ok   ") == 8

        again = runner.invoke(app, ["dashboards", "install", "--kibana-url", kibana.url, "--space", "ops",
                                    "--api-key", "c2VjcmV0OmtleQ=="])
        assert again.exit_code == 0, again.output  # overwrite=true: re-running updates in place


def test_install_with_basic_auth_to_the_default_space_uses_the_plain_path() -> None:
    with FakeKibana(basic=("elastic", "changeme")) as kibana:
        result = runner.invoke(app, ["dashboards", "install", "--kibana-url", kibana.url,
                                     "--username", "elastic", "--password", "changeme"])
        assert result.exit_code == 0, result.output
        assert kibana.requests[-1].path == "/api/saved_objects/_import"
        assert kibana.requests[-1].headers["authorization"].startswith("Basic ")


def test_install_fails_with_one_line_on_bad_credentials_unknown_space_and_no_kibana() -> None:
    with FakeKibana(api_key="right") as kibana:
        wrong = runner.invoke(app, ["dashboards", "install", "--kibana-url", kibana.url, "--api-key", "wrong"])
        assert wrong.exit_code == 2 and "HTTP 401" in wrong.output and "--api-key" in wrong.output
        space = runner.invoke(app, ["dashboards", "install", "--kibana-url", kibana.url, "--api-key", "right",
                                    "--space", "nope"])
        assert space.exit_code == 2 and "space 'nope'" in space.output
        url = kibana.url
    gone = runner.invoke(app, ["dashboards", "install", "--kibana-url", url])
    assert gone.exit_code == 2 and "cannot reach Kibana" in gone.output
    missing = runner.invoke(app, ["dashboards", "install"], env={"DSAGENT_KIBANA_URL": ""})
    assert missing.exit_code == 2 and "--kibana-url" in missing.output
    half = runner.invoke(app, ["dashboards", "install", "--kibana-url", url, "--username", "u"])
    assert half.exit_code == 2 and "both --username and --password" in half.output


def test_install_exits_1_and_names_each_failed_object(tmp_path: Path) -> None:
    without_views = [obj for obj in catalog.saved_objects() if obj["type"] != "index-pattern"]
    file = tmp_path / "partial.ndjson"
    file.write_text(ndjson.dumps(without_views))
    with FakeKibana() as kibana:
        result = runner.invoke(app, ["dashboards", "install", "--kibana-url", kibana.url, "--file", str(file)])
    assert result.exit_code == 1
    error_lines = [line for line in result.stdout.splitlines() if line.startswith("error")]
    assert len(error_lines) == 5  # the saved search and the four dashboards
    assert all("missing_references: index-pattern/dsagent-" in line for line in error_lines)


def test_install_refuses_a_malformed_file_before_sending(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"type": "dashboard", "id": "x", "attributes": {}}\nnot json\n')
    with FakeKibana() as kibana:
        result = runner.invoke(app, ["dashboards", "install", "--kibana-url", kibana.url, "--file", str(bad)])
        assert result.exit_code == 2 and "bad.ndjson:2: not JSON" in result.output
        assert kibana.requests == []


def test_export_round_trips_through_kibana_to_the_same_stable_text(tmp_path: Path) -> None:
    with FakeKibana(spaces=("default", "ops")) as kibana:
        assert runner.invoke(app, ["dashboards", "install", "--kibana-url", kibana.url, "--space", "ops"]).exit_code == 0
        out = tmp_path / "exported.ndjson"
        result = runner.invoke(app, ["dashboards", "export", "--kibana-url", kibana.url, "--space", "ops",
                                     "-o", str(out)])
        assert result.exit_code == 0, result.output
        request = kibana.requests[-1]
        assert request.path == "/s/ops/api/saved_objects/_export" and request.headers["kbn-xsrf"] == "true"
        body = json.loads(request.body)
        assert body["includeReferencesDeep"] is True
        assert {o["id"] for o in body["objects"]} == {"dsagent-fleet-overview", "dsagent-gpu", "dsagent-requests",
                                                      "dsagent-actions"}
    assert out.read_text() == PACKAGED  # Kibana's bookkeeping (updated_at, version) is normalized away


def test_export_without_kibana_writes_the_packaged_objects() -> None:
    result = runner.invoke(app, ["dashboards", "export"])
    assert result.exit_code == 0 and result.stdout == PACKAGED


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("DSAGENT_TEST_KIBANA_URL"), reason="DSAGENT_TEST_KIBANA_URL not set")
def test_install_and_export_against_a_real_kibana(tmp_path: Path) -> None:
    url = os.environ["DSAGENT_TEST_KIBANA_URL"]
    auth = ["--api-key", os.environ["DSAGENT_TEST_KIBANA_API_KEY"]] if os.environ.get("DSAGENT_TEST_KIBANA_API_KEY") \
        else []
    result = runner.invoke(app, ["dashboards", "install", "--kibana-url", url, *auth])
    assert result.exit_code == 0, result.output
    out = tmp_path / "live.ndjson"
    exported = runner.invoke(app, ["dashboards", "export", "--kibana-url", url, *auth, "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    ids = {(obj["type"], obj["id"]) for obj in ndjson.loads(out.read_text())}
    assert {(obj["type"], obj["id"]) for obj in catalog.saved_objects()} <= ids
