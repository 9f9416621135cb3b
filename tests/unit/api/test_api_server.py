"""The serve entry point's parts that need no model: model-dir checks, signal handling, logging split."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import pytest
import uvicorn
from api_fake_engine import FakeEngine
from dssidecar.api.app import build_app
from dssidecar.api.server import (
    DrainingServer,
    ModelLoadError,
    build_server_app,
    check_model_dir,
    configure_logging,
)
from dssidecar.config import ServerConfig


def test_check_model_dir_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no model given"):
        check_model_dir(None)
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_model_dir(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="config.json"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="safetensors"):
        check_model_dir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        check_model_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert check_model_dir(tmp_path) == tmp_path


async def test_first_signal_drains_then_exits_second_skips_the_wait_third_forces() -> None:
    engine = FakeEngine(token_delay_seconds=0.01)
    app = build_app(engine)
    server = DrainingServer(uvicorn.Config(app), app, grace_period_seconds=30.0)
    server._loop = asyncio.get_running_loop()
    engine.blocks_held["busy"] = 1  # an in-flight request keeps the drain waiting
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.sleep(0.05)
    assert app.state.serving.draining is True
    assert server.should_exit is False  # still draining
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit is True and server.force_exit is False
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit is True
    assert server._captured_signals == []  # uvicorn must not re-raise SIGTERM after a clean drain
    engine.blocks_held.clear()
    assert server._drain_task is not None
    await asyncio.wait_for(server._drain_task, 5)


async def test_drain_with_nothing_in_flight_asks_uvicorn_to_exit() -> None:
    engine = FakeEngine()
    app = build_app(engine)
    server = DrainingServer(uvicorn.Config(app), app, grace_period_seconds=30.0)
    server._loop = asyncio.get_running_loop()
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.sleep(0)
    assert server._drain_task is not None
    await asyncio.wait_for(server._drain_task, 5)
    assert server.should_exit is True
    assert engine.shutdown_calls == 1


def test_build_server_app_uses_served_name_and_grace() -> None:
    app = build_server_app(ServerConfig(served_model_name="alias", shutdown_grace_seconds=3), FakeEngine())
    assert app.state.serving.model_name == "alias"
    assert app.state.serving.telemetry.exporting is False


def test_access_log_goes_alone_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    access = logging.getLogger("dssidecar.access")
    root = logging.getLogger()
    saved = (list(access.handlers), access.propagate, access.level)
    saved_root = (list(root.handlers), root.level)
    try:
        configure_logging("info")
        access.info(json.dumps({"event": "request"}))
        logging.getLogger("dssidecar.api").warning("diagnostic")
        captured = capsys.readouterr()
        assert captured.out.strip() == '{"event": "request"}'
        assert "diagnostic" in captured.err and "request" not in captured.err
    finally:
        access.handlers[:] = saved[0]
        access.propagate, access.level = saved[1], saved[2]
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
