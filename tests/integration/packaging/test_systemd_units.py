"""packaging/systemd: every unit passes `systemd-analyze verify` with nothing on stderr (unknown keys only
warn, so any warning fails), `systemd-analyze security --offline=yes` stays under its threshold, the
hardening the issue asks for is there, and install.sh is idempotent and never overwrites configuration.

ExecStart names /opt/dsagent/bin, which exists only on an installed host; verify checks that the command
is executable, so the copy under test points at this checkout's venv instead (the only line changed).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from dsagent.config import load_config

from tests.conftest import REPO_ROOT, require_tool

SYSTEMD = REPO_ROOT / "packaging" / "systemd"
VENV_BIN = Path(sys.executable).parent
#: unit (and drop-ins) -> the exposure `systemd-analyze security` must not exceed
CASES = {
    "dsagent.service": ((), 2.0),
    "dssidecar.service": ((), 2.0),
    "dsagent.service+gpu-control": (("gpu-control.conf",), 2.5),
}


def staged_unit(tmp_path: Path, case: str) -> tuple[Path, dict[str, str]]:
    unit_name = case.split("+")[0]
    dropins, _ = CASES[case]
    unit = tmp_path / unit_name
    unit.write_text((SYSTEMD / unit_name).read_text().replace("/opt/dsagent/bin/", f"{VENV_BIN}/"))
    for dropin in dropins:
        target = tmp_path / f"{unit_name}.d" / dropin
        target.parent.mkdir(exist_ok=True)
        target.write_text((SYSTEMD / dropin).read_text())
    # the trailing ':' keeps the built-in search path after ours, so drop-ins beside the unit are found
    return unit, {"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"}


@pytest.mark.parametrize("case", list(CASES))
def test_unit_verifies_without_any_warning(case: str, tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    unit, env = staged_unit(tmp_path, case)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_unit_security_exposure_is_under_the_threshold(case: str, tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    unit, env = staged_unit(tmp_path, case)
    threshold = CASES[case][1]
    result = subprocess.run([tool, "security", "--offline=yes", f"--threshold={int(threshold * 10)}", str(unit)],
                            capture_output=True, text=True, env=env, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= threshold and result.returncode == 0, result.stdout[-2000:]


def test_verify_check_catches_an_unknown_key(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    unit, env = staged_unit(tmp_path, "dsagent.service")
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nProtectSystm=strict\n"))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, env=env, timeout=60)
    assert "Unknown key" in result.stderr  # exit status 0: only the stderr check catches it


def _directives(unit: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in (SYSTEMD / unit).read_text().splitlines()  # type: ignore[misc]
            if "=" in line and not line.startswith("#")]


@pytest.mark.parametrize("unit", ["dsagent.service", "dssidecar.service"])
def test_units_hold_the_promised_hardening(unit: str) -> None:
    directives = _directives(unit)
    for expected in [("User", "dsagent"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                     ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("ReadWritePaths", "/var/lib/dsagent"),
                     ("Restart", "on-failure"), ("StandardOutput", "journal"), ("CapabilityBoundingSet", ""),
                     ("AmbientCapabilities", "")]:
        assert expected in directives, expected
    if unit == "dsagent.service":
        assert ("ExecReload", "/bin/kill -HUP $MAINPID") in directives
        assert any(k == "ExecStart" and "--config /etc/dsagent/config.yaml" in v for k, v in directives)
    gpu_control = _directives("gpu-control.conf")
    assert ("AmbientCapabilities", "CAP_SYS_ADMIN") in gpu_control


def _install(root: Path, *flags: str) -> str:
    result = subprocess.run(["bash", str(SYSTEMD / "install.sh"), "--root", str(root), "--no-venv", "--no-start",
                             *flags], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_install_script_is_idempotent_and_keeps_operator_config(tmp_path: Path) -> None:
    first = _install(tmp_path)
    assert "installed" in first
    units = tmp_path / "etc" / "systemd" / "system"
    assert (units / "dsagent.service").read_text() == (SYSTEMD / "dsagent.service").read_text()
    config = tmp_path / "etc" / "dsagent" / "config.yaml"
    config.write_text(config.read_text() + "# edited by the operator\n")
    second = _install(tmp_path)
    assert "installed" not in second and "created" not in second, second
    assert "edited by the operator" in config.read_text()
    site_rules = tmp_path / "etc" / "dsagent" / "rules" / "site.yaml"
    assert site_rules.read_text() == (SYSTEMD / "site-rules.yaml").read_text()

    with_control = _install(tmp_path, "--enable-gpu-control")
    assert (units / "dsagent.service.d" / "gpu-control.conf").is_file() and "installed" in with_control
    assert "installed" not in _install(tmp_path, "--enable-gpu-control")
    _install(tmp_path)  # the flags describe the wanted state: without it the drop-in goes
    assert not (units / "dsagent.service.d").exists()


def test_install_script_passes_shellcheck() -> None:
    tool = require_tool("shellcheck", (VENV_BIN,))
    result = subprocess.run([tool, "--severity=style", str(SYSTEMD / "install.sh")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout


def test_install_script_refuses_unknown_options() -> None:
    result = subprocess.run(["bash", str(SYSTEMD / "install.sh"), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown option --bogus" in result.stderr


def test_example_config_is_a_valid_agent_config() -> None:
    config = load_config(SYSTEMD / "config.yaml", environ={})
    assert config.server.port == 9464
    # the packs the venv installs as data files, then the host's own rules (which install.sh seeds)
    assert config.rules.paths == ["/opt/dsagent/share/dsagent/rules/*.yaml", "/etc/dsagent/rules/*.yaml"]


def test_site_rules_pass_the_rules_checker_and_match_the_kubernetes_example() -> None:
    import yaml
    from dsagent.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["rules", "check", str(SYSTEMD / "site-rules.yaml")])
    assert result.exit_code == 0 and "SUCCESS" in result.output, result.output
    kubernetes_example = REPO_ROOT / "packaging" / "kubernetes" / "base" / "rules" / "site.yaml"
    assert yaml.safe_load((SYSTEMD / "site-rules.yaml").read_text()) == yaml.safe_load(kubernetes_example.read_text())
