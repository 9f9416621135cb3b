"""The default rule packs: each loads, each has promtool-format tests here, those pass in dsagent (with
their exp_actions) and, with the dsagent extensions stripped, in the real promtool too.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dsagent.rules.rulefile import load_file
from dsagent.rules.testrunner import run_file, run_files

PACKS = Path(__file__).resolve().parents[1]
PACK_FILES = sorted(PACKS.glob("*.yaml"))
TEST_FILES = sorted(Path(__file__).parent.glob("*_test.yaml"))


def _promtool() -> str | None:
    found = shutil.which("promtool")
    local = PACKS.parent / ".cache" / "tools" / "bin" / "promtool"
    return found or (str(local) if local.is_file() and os.access(local, os.X_OK) else None)


def test_every_pack_loads_and_has_tests() -> None:
    assert {p.stem for p in PACK_FILES} == {"slo", "gpu", "batching", "engine"}
    for pack in PACK_FILES:
        groups = load_file(pack)
        assert groups and all(g.rules for g in groups)
        assert (Path(__file__).parent / f"{pack.stem}_test.yaml").is_file(), f"{pack.name} has no tests"
    alerting = [r for p in PACK_FILES for g in load_file(p) for r in g.rules if r.kind == "alert"]
    assert all(r.actions for r in alerting), "every alerting rule in the packs says what it does"


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[f.name for f in TEST_FILES])
def test_pack_tests_pass_with_their_actions(test_file: Path) -> None:
    result = run_file(test_file)
    assert result.ok, "\n".join(result.errors)
    assert "exp_actions" in test_file.read_text()


def test_a_wrong_expected_action_fails(tmp_path: Path) -> None:
    text = (Path(__file__).parent / "gpu_test.yaml").read_text().replace("../gpu.yaml", str(PACKS / "gpu.yaml"))
    wrong = tmp_path / "gpu_wrong_test.yaml"
    wrong.write_text(text.replace("old: 20, new: 19", "old: 20, new: 18"))
    out = io.StringIO()
    assert run_files([str(wrong)], out, out) == 1
    assert "actions:" in out.getvalue() and '"new": 18' in out.getvalue() and '"new": 19' in out.getvalue()


def _strip_extensions(test_file: Path, directory: Path) -> Path:
    """Copies of the test and its rule files without dsagent's keys (actions, exp_actions, knob_state)."""
    doc = yaml.safe_load(test_file.read_text())
    rule_files = []
    for name in doc["rule_files"]:
        rules = yaml.safe_load((test_file.parent / name).read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule.pop("actions", None)
        target = directory / Path(name).name
        target.write_text(yaml.safe_dump(rules, sort_keys=False))
        rule_files.append(target.name)
    doc["rule_files"] = rule_files
    for group in doc["tests"]:
        group.pop("knob_state", None)
        for case in group.get("alert_rule_test", []):
            case.pop("exp_actions", None)
    stripped = directory / test_file.name
    stripped.write_text(yaml.safe_dump(doc, sort_keys=False))
    return stripped


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[f.name for f in TEST_FILES])
def test_pack_tests_pass_in_promtool_without_extensions(test_file: Path, tmp_path: Path) -> None:
    promtool = _promtool()
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool not found on PATH or in .cache/tools/bin; CI must run this")
        pytest.skip("promtool not found on PATH or in .cache/tools/bin (run .ci/install-deps)")
    stripped = _strip_extensions(test_file, tmp_path)
    proc = subprocess.run([promtool, "test", "rules", stripped.name], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_file(stripped).ok
