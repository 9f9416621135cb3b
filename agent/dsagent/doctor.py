"""`dsagent doctor`: checks a host against what the agent needs, one line per check, each with its fix.

Why: most failed installs are one of a handful of causes (no NVML or no permission to it, the engine not
answering, Elasticsearch or Kibana unreachable or refusing the credentials, a state directory the service
user cannot write, a spool that is corrupt or at its quota, GPU control without the capability). Each
check answers ok / warn / fail and, when not ok, the one thing to do (docs/troubleshooting.md explains
more). fail means the agent cannot do its job as configured; warn means it runs with something missing.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from dsagent.config import AgentConfig

Status = Literal["ok", "warn", "fail"]
CAP_SYS_ADMIN = 21
SPOOL_WARN_RATIO = 0.8


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class KibanaTarget:
    url: str
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    ca_certs: Path | None = None


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "ok", detail)


def check_config(config: AgentConfig, source: str) -> CheckResult:
    return _ok("config", f"{source} is valid (engine {config.engine.kind}, data dir {config.data_dir})")


def check_nvml(backend: Any = None) -> CheckResult:
    """NVML loads, sees GPUs and answers a reading (through the one module that imports pynvml)."""
    from dsagent.sources.gpu_backend import GpuUnavailable

    if backend is None:
        from dsagent.sources.nvml_backend import NvmlBackend

        backend = NvmlBackend(collect_processes=False, watch_xid=False)
    try:
        backend.open()
        readings = backend.read_all()
    except GpuUnavailable as exc:
        reason = str(exc)
        if "permission" in reason.lower():
            return CheckResult("nvml", "fail", reason,
                               "let the service user open /dev/nvidia* (systemd: DeviceAllow in dsagent.service; "
                               "containers: NVIDIA_VISIBLE_DEVICES=all with the NVIDIA runtime)")
        return CheckResult("nvml", "warn", f"{reason}: GPU metrics are omitted",
                           "on a GPU host install the NVIDIA driver (nvidia-smi must work); on a CPU host "
                           "set sources.gpu.backend: off to silence this")
    finally:
        backend.close()
    names = sorted({reading.name for reading in readings if reading.name})
    return _ok("nvml", f"{len(readings)} GPU(s) readable: {', '.join(names) or 'unnamed'}")


def _effective_capabilities() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def check_gpu_control(nvml_result: CheckResult) -> CheckResult:
    """Clock and power changes need CAP_SYS_ADMIN (NVML refuses them otherwise); reading needs nothing."""
    if nvml_result.status != "ok":
        return CheckResult("gpu control", "warn", "no readable GPU, so no clocks or power limits to change",
                           "fix the nvml line first")
    if os.geteuid() == 0 or _effective_capabilities() & (1 << CAP_SYS_ADMIN):
        return _ok("gpu control", "clock and power-limit changes permitted (CAP_SYS_ADMIN)")
    return CheckResult("gpu control", "warn", "rules may read the GPUs but not change clocks or power limits "
                       "(no CAP_SYS_ADMIN); such actions are audited as skipped",
                       "systemd: packaging/systemd/install.sh --enable-gpu-control; Kubernetes: add SYS_ADMIN "
                       "to the agent container's capabilities; or leave GPU actions out of the rules")


def engine_url(config: AgentConfig) -> str:
    if config.engine.url:
        return config.engine.url.rstrip("/")
    return f"http://{config.engine.host}:{config.engine.port}"


def check_engine(config: AgentConfig, client: httpx.Client) -> CheckResult:
    url = engine_url(config)
    try:
        response = client.get(f"{url}/readyz")
    except httpx.HTTPError as exc:
        if config.engine.kind == "builtin":
            return CheckResult("engine", "warn", f"nothing answers at {url} ({type(exc).__name__}); the builtin "
                               "engine runs only while `dsagent run` does", "start the agent: dsagent run")
        return CheckResult("engine", "fail", f"the {config.engine.kind} engine at {url} is unreachable: {exc}",
                           "start the engine or correct engine.url (dssidecar.service: systemctl status dssidecar)")
    if response.status_code == 200:
        return _ok("engine", f"{url}/readyz answered 200 (ready)")
    return CheckResult("engine", "warn", f"{url}/readyz answered {response.status_code} (loading or draining)",
                       "wait for the model to load; if it stays so, see docs/troubleshooting.md#crash-looping-engine")


def check_agent_api(config: AgentConfig, client: httpx.Client) -> CheckResult:
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::") else config.server.host
    url = f"http://{host}:{config.server.port}"
    try:
        response = client.get(f"{url}/healthz")
    except httpx.HTTPError:
        return CheckResult("agent api", "warn", f"no agent answers at {url}", "start it: dsagent run "
                           "(or systemctl start dsagent)")
    if response.status_code != 200:
        return CheckResult("agent api", "fail", f"{url}/healthz answered {response.status_code}",
                           "read the agent's log (journalctl -u dsagent) for the failing part")
    try:
        ready = client.get(f"{url}/readyz")
    except httpx.HTTPError:
        ready = None
    if ready is not None and ready.status_code == 503:
        try:
            stale = "; ".join(ready.json().get("stale", [])) or "not ready"
        except ValueError:
            stale = "not ready"
        return CheckResult("agent api", "warn", f"{url} is alive but not ready: {stale}",
                           "fix the stale source named (engine: the engine line; gpu: the nvml line)")
    readiness = ", /readyz 200" if ready is not None and ready.status_code == 200 else ""
    return _ok("agent api", f"{url}/healthz answered 200{readiness}")


def check_elasticsearch(config: AgentConfig) -> CheckResult:
    es = config.export.elasticsearch
    if es is None:
        return _ok("elasticsearch", "not configured (telemetry goes to the NDJSON files and/or OTLP)")
    from dsagent.export.elasticsearch import build_client

    client = build_client(es)
    try:
        info = client.info()
        version = info.get("version", {}).get("number", "?")
        try:
            privileges = client.security.has_privileges(
                cluster=["manage_index_templates"],
                index=[{"names": [f"metrics-{es.index_prefix}.*", f"logs-{es.index_prefix}.*"],
                        "privileges": ["create_doc", "auto_configure"]}])
        except Exception as exc:
            if _status_of(exc) in (401, 403):
                raise
            # security off (or an API the cluster lacks): there is nothing that could refuse the writes
            return _ok("elasticsearch", f"{es.url} answered (version {version}); privileges not checked: "
                       f"{_first_line(exc)}")
        if not privileges.get("has_all_requested"):
            return CheckResult("elasticsearch", "fail", f"{es.url} (version {version}) answered, but the user "
                               "lacks create_doc/auto_configure on the agent's data streams or "
                               "manage_index_templates", "grant those privileges to the API key or user "
                               "(docs/troubleshooting.md#elasticsearch-unreachable-or-refusing)")
        return _ok("elasticsearch", f"{es.url} answered (version {version}); the credentials may write the "
                   "agent's data streams and templates")
    except Exception as exc:
        status = _status_of(exc)
        if status in (401, 403):
            return CheckResult("elasticsearch", "fail", f"{es.url} refused the credentials (HTTP {status})",
                               "check export.elasticsearch.api_key or username/password "
                               "(DSAGENT_ELASTICSEARCH_API_KEY)")
        return CheckResult("elasticsearch", "fail", f"{es.url} unreachable: {type(exc).__name__}: {exc}",
                           "check the URL, the network and ca_certs; meanwhile the spool keeps every document "
                           "and ships them on recovery")
    finally:
        client.close()


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", None)
    return int(status) if isinstance(status, int) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def check_kibana(target: KibanaTarget | None) -> CheckResult:
    if target is None:
        return _ok("kibana", "not checked (give --kibana-url or DSAGENT_KIBANA_URL)")
    from dsagent.dashboards.kibana import KibanaAuth, KibanaClient, KibanaError

    try:
        with KibanaClient(target.url, KibanaAuth(target.api_key, target.username, target.password),
                          ca_certs=target.ca_certs, timeout_seconds=10) as client:
            status = client.status()
    except KibanaError as exc:
        return CheckResult("kibana", "fail", str(exc), "check --kibana-url and the credentials; then "
                           "dsagent dashboards install")
    version = status.get("version", {}).get("number", "?")
    level = status.get("status", {}).get("overall", {}).get("level", "?")
    if level != "available":
        return CheckResult("kibana", "warn", f"{target.url} (version {version}) reports status {level}",
                           "wait for Kibana to become available before dsagent dashboards install")
    return _ok("kibana", f"{target.url} answered (version {version}, available)")


def check_state_dir(config: AgentConfig) -> CheckResult:
    data_dir = Path(config.data_dir).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-") as probe:
            probe.write(b"ok")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return CheckResult("state dir", "fail", f"{data_dir} is not writable: {exc.strerror or exc}",
                           "chown the directory to the service user (install.sh does) or set data_dir")
    free = shutil.disk_usage(data_dir).free
    quota = config.export.spool.max_bytes
    if free < quota:
        return CheckResult("state dir", "warn", f"{data_dir} writable, but only {free / 2**20:.0f} MiB free for a "
                           f"{quota / 2**20:.0f} MiB spool quota", "free disk space or lower export.spool.max_bytes")
    return _ok("state dir", f"{data_dir} writable, {free / 2**30:.1f} GiB free")


def check_spool(config: AgentConfig) -> CheckResult:
    spool_dir = Path(config.export.spool.directory or Path(config.data_dir).expanduser() / "spool")
    files = sorted(spool_dir.glob("*.sqlite3"))
    if not files:
        return _ok("spool", f"no spool yet in {spool_dir} (created on the first run)")
    quota = config.export.spool.max_bytes
    parts = []
    for path in files:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                verdict = db.execute("PRAGMA quick_check").fetchone()[0]
                documents, size = db.execute(
                    "SELECT (SELECT COALESCE(SUM(documents), 0) FROM chunks) - "
                    "(SELECT COALESCE(SUM(documents), 0) FROM acked), "
                    "(SELECT COALESCE(SUM(size_bytes), 0) FROM chunks) - "
                    "(SELECT COALESCE(SUM(size_bytes), 0) FROM acked)").fetchone()
        except sqlite3.Error as exc:
            return CheckResult("spool", "fail", f"{path} cannot be read: {exc}",
                               "stop the agent and move the file aside; its undelivered documents are in it")
        if verdict != "ok":
            return CheckResult("spool", "fail", f"{path} is damaged: {verdict}",
                               "stop the agent and move the file aside (the agent starts a new spool)")
        if size > SPOOL_WARN_RATIO * quota:
            return CheckResult("spool", "warn", f"{path.stem}: {documents} documents waiting, {size / 2**20:.0f} "
                               f"MiB of the {quota / 2**20:.0f} MiB quota: the destination is not keeping up",
                               "check that destination (the elasticsearch line); past the quota the oldest "
                               "metrics are dropped")
        parts.append(f"{path.stem} {documents} waiting")
    return _ok("spool", f"{len(files)} spool(s) intact: " + ", ".join(parts))


def run_checks(config: AgentConfig, config_source: str, kibana: KibanaTarget | None = None,
               timeout_seconds: float = 5.0,
               progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Every check, in the order an operator would fix them; a check that crashes is a fail line."""
    results: list[CheckResult] = []

    def run(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
        if progress is not None:
            progress(name)
        try:
            result = fn()
        except Exception as exc:  # a doctor must finish its list
            result = CheckResult(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}",
                                 "report this with the output of dsagent doctor --json")
        results.append(result)
        return result

    run("config", lambda: check_config(config, config_source))
    nvml = run("nvml", check_nvml)
    run("gpu control", lambda: check_gpu_control(nvml))
    with httpx.Client(timeout=timeout_seconds) as client:
        run("engine", lambda: check_engine(config, client))
        run("agent api", lambda: check_agent_api(config, client))
    run("elasticsearch", lambda: check_elasticsearch(config))
    run("kibana", lambda: check_kibana(kibana))
    run("state dir", lambda: check_state_dir(config))
    run("spool", lambda: check_spool(config))
    return results


def render_line(result: CheckResult) -> str:
    line = f"{result.status:<5} {result.name:<14} {result.detail}"
    if result.fix and result.status != "ok":
        line += f"\n{'':<20} fix: {result.fix}"
    return line


def summary(results: list[CheckResult]) -> dict[str, Any]:
    return {status: sum(1 for r in results if r.status == status) for status in ("ok", "warn", "fail")}
