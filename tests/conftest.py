"""Fixtures shared by every test folder.

The demo checkpoint is generated once per machine into .cache/test-models (keyed by its parameters) so
the suite does not retrain it on every run; a fresh clone builds it on first use.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_MODEL_CACHE = Path(os.environ.get("DSAGENT_TEST_MODEL_CACHE", REPO_ROOT / ".cache" / "test-models"))


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (bound then released; good enough for tests on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_demo_model(arch: str = "qwen2", size: str = "tiny", seed: int = 0, train_steps: int = 0) -> Path:
    """Write (or reuse) a demo checkpoint; a finished one has manifest.json written last."""
    from dssidecar.demo_model import write_demo_model

    target = TEST_MODEL_CACHE / f"{arch}-{size}-seed{seed}-steps{train_steps}"
    if not (target / "manifest.json").exists():
        write_demo_model(target, size=size, seed=seed, arch=arch, train_steps=train_steps)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """Random-weight tiny Qwen2 demo checkpoint (fast; for plumbing and exactness tests)."""
    return build_demo_model("qwen2", "tiny", seed=0, train_steps=0)


@pytest.fixture(scope="session")
def tiny_llama_model_dir() -> Path:
    """Random-weight tiny Llama demo checkpoint."""
    return build_demo_model("llama", "tiny", seed=0, train_steps=0)


@pytest.fixture(scope="session")
def trained_tiny_model_dir() -> Path:
    """Tiny Qwen2 demo checkpoint trained briefly, so precision checks and demos have real structure."""
    return build_demo_model("qwen2", "tiny", seed=0, train_steps=200)


@pytest.fixture()
def unused_port() -> int:
    return free_port()


def require_tool(name: str, fallback_dirs: tuple[Path, ...] = ()) -> str:
    """The path of a reference tool (systemd-analyze, hadolint, ...); missing: skip with the reason, or fail
    on CI (CI=true), where .ci/install-deps and the dev extra must have provided it."""
    import shutil

    found = shutil.which(name) or next((str(d / name) for d in fallback_dirs if (d / name).is_file()), None)
    if found:
        return found
    reason = f"{name} not found on PATH (installed by .ci/install-deps or the dev extra)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
