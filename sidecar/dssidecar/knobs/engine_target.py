"""Bind the KnobController to the real engine: ranges for this device, runner builds, between-step apply.

Why this exists: knobs.py knows nothing about torch or the engine; this adapter does. It builds a new
runner for a precision/backend change beside the running one (converted copy of the fp32 weights, warmed
up on a private scratch pool so the live KV cache is never touched), then hands the switch, live values
and KV pool resizes to the engine thread through `AsyncLLMEngine.run_between_steps`, so a step never sees
half a change. Sequences in flight continue; when the KV dtype changes the engine re-prefills them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dssidecar.backends.registry import BACKENDS, apply_backend, supported_backends
from dssidecar.check_precision import Thresholds, check_precision, fixed_prompt_texts, tokenize_texts
from dssidecar.engine.protocol import SamplingParams
from dssidecar.engine.sequence import Sequence
from dssidecar.knobs import KnobSpec, KnobUnsupportedError
from dssidecar.kv_pool import KVPoolResizer, kv_block_bytes, memory_figures
from dssidecar.precision import PRECISIONS, convert_model, precision_plan, supported_precisions

logger = logging.getLogger("dssidecar.knobs")

MAX_BATCH_SIZE_LIMIT = 1024
MAX_NUM_BATCHED_TOKENS_LIMIT = 1 << 20
INSTALL_TIMEOUT_SECONDS = 120.0


def warm_up_runner(runner: Any, model_config: Any, block_size: int) -> float:
    """Run prefill (1 and 2 sequences, with and without context) and decode (1, 2, 3) on a scratch pool.

    Compiles what torch.compile/TensorRT need and touches the kernels, without writing to the live pool.
    Returns the seconds it took.
    """
    from dssidecar.engine.model_runner import ModelRunner

    started = time.perf_counter()
    scratch = ModelRunner(
        runner.model, model_config, num_blocks=16, block_size=block_size, device=runner.device,
        kv_dtype=runner.kv_dtype, forward=runner.forward, precision=runner.precision, backend=runner.backend,
    )
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    vocab = int(model_config.vocab_size)

    def make(length: int, first_block: int) -> Sequence:
        token_ids = [(7 * i + 3) % vocab for i in range(length)]
        seq = Sequence(request_id=f"warmup-{first_block}", token_ids=token_ids, params=params,
                       arrival_time=time.monotonic(), block_size=block_size)
        seq.block_table = list(range(first_block, first_block + 4))
        return seq

    seqs = [make(block_size + 3, 0), make(5, 4), make(9, 8)]
    for batch in ([seqs[0]], seqs[1:]):
        for seq in batch:
            seq.num_cached_tokens, seq.num_scheduled_tokens = 0, seq.num_tokens
        scratch.run(batch, True)
    # prefill with context (a chunk after cached tokens)
    seqs[0].num_cached_tokens, seqs[0].num_scheduled_tokens = block_size, 3
    scratch.run([seqs[0]], True)
    for batch_size in (1, 2, 3):
        batch = seqs[:batch_size]
        for seq in batch:
            seq.token_ids.append(1)
            seq.num_scheduled_tokens = 1
        scratch.run(batch, False)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return time.perf_counter() - started


class EngineKnobTarget:
    """KnobTarget over an AsyncLLMEngine (anything with `.engine: LLMEngine` and `run_between_steps`)."""

    def __init__(
        self,
        async_engine: Any,
        *,
        model_path: str | Path | None = None,
        thresholds: Thresholds | None = None,
        accuracy_prompts: int = 8,
    ) -> None:
        self.async_engine = async_engine
        self.engine = async_engine.engine
        self.model_path = Path(model_path) if model_path is not None else None
        self.thresholds = thresholds or Thresholds()
        self.accuracy_prompts = accuracy_prompts
        self.device: torch.device = self.engine.runner.device
        self.resizer = KVPoolResizer(self.engine)
        self.engine.step_hooks.append(self.resizer.on_step)
        self.runner_swaps_total = 0
        self.last_warmup_seconds: float | None = None
        self._base_model: nn.Module | None = self.engine.runner.model if self.engine.runner.precision == "fp32" else None
        self._base_lock = threading.Lock()
        self._accuracy_cache: dict[str, tuple[bool, dict[str, Any]]] = {}

    # ---- ranges and values

    def _kv_blocks_range(self) -> tuple[int, int]:
        engine = self.engine
        block_size = int(engine.config.block_size)
        minimum = math.ceil(engine.max_model_len / block_size) + 1
        block_bytes = max(1, kv_block_bytes(engine))
        pool_bytes = block_bytes * int(engine.runner.num_blocks)
        if self.device.type == "cuda":
            free_bytes, _total = torch.cuda.mem_get_info(self.device)
            budget = int((free_bytes + pool_bytes) * 0.95)
        else:
            import psutil

            budget = int(psutil.virtual_memory().available * 0.5) + pool_bytes
        maximum = max(minimum, budget // block_bytes, int(engine.runner.num_blocks))
        return minimum, maximum

    def knob_specs(self) -> dict[str, KnobSpec]:
        kv_min, kv_max = self._kv_blocks_range()
        specs = {
            "max_batch_size": KnobSpec(
                "max_batch_size", "int", "live", "most sequences in one step (from the next step)", 1, MAX_BATCH_SIZE_LIMIT
            ),
            "max_num_batched_tokens": KnobSpec(
                "max_num_batched_tokens", "int", "live", "most tokens in one step; longer prompts are chunked",
                1, MAX_NUM_BATCHED_TOKENS_LIMIT, unit="tokens",
            ),
            "kv_cache_blocks": KnobSpec(
                "kv_cache_blocks", "int", "live",
                "KV pool size; grows at once, shrinks as far as free blocks allow and the rest as sequences finish",
                kv_min, kv_max, unit="blocks",
            ),
            "kv_cache_memory_fraction": KnobSpec(
                "kv_cache_memory_fraction", "float", "live",
                "KV pool size as a fraction of the GPU's total memory (GPU only; sets kv_cache_blocks)", 0.001, 0.95,
                unit="ratio",
            ),
            "precision": KnobSpec(
                "precision", "choice", "swap", "weights/compute precision (new runner built beside the old one)",
                choices=PRECISIONS,
            ),
            "backend": KnobSpec(
                "backend", "choice", "swap", "execution backend (new runner, warmed up before the switch)",
                choices=BACKENDS,
            ),
        }
        return specs

    def current_values(self) -> dict[str, Any]:
        engine = self.engine
        values: dict[str, Any] = {
            "max_batch_size": int(engine.config.max_batch_size),
            "max_num_batched_tokens": int(engine.config.max_num_batched_tokens),
            "kv_cache_blocks": self.resizer.num_blocks,
            "precision": engine.runner.precision,
            "backend": engine.runner.backend,
        }
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            values["kv_cache_memory_fraction"] = round(kv_block_bytes(engine) * self.resizer.num_blocks / total, 6)
        return values

    def unsupported_reason(self, name: str, value: Any) -> str | None:
        if name == "precision":
            return supported_precisions(self.device)[str(value)]
        if name == "backend":
            return supported_backends(self.device)[str(value)]
        if name == "kv_cache_memory_fraction" and self.device.type != "cuda":
            return "kv_cache_memory_fraction applies to GPU memory; on the CPU set kv_cache_blocks"
        return None

    def status(self) -> dict[str, Any]:
        engine = self.engine
        status: dict[str, Any] = {
            "device": str(self.device),
            "effective_max_batch_size": int(engine.scheduler.max_batch_size),
            "kv_cache_blocks_allocated": int(engine.runner.num_blocks),
            "kv_cache_blocks_pending_release": self.resizer.pending_release,
            "oom_events_total": int(engine.oom_guard.oom_events_total),
            "runner_swaps_total": self.runner_swaps_total,
            "last_warmup_seconds": self.last_warmup_seconds,
        }
        for _attempt in range(3):  # the engine thread may change a queue while we read it
            try:
                status.update(memory_figures(engine))
                break
            except (RuntimeError, IndexError):
                continue
        return status

    # ---- precision / backend

    def _fp32_base(self) -> nn.Module:
        with self._base_lock:
            if self._base_model is None:
                if self.model_path is None:
                    raise KnobUnsupportedError(
                        "the engine was started in a reduced precision and no checkpoint path is known to reload fp32",
                        {"knob": "precision"},
                    )
                from dssidecar.models.loader import load_checkpoint

                self._base_model = load_checkpoint(self.model_path, device=self.device, dtype=torch.float32).model
            return self._base_model

    def build_runner(self, precision: str, backend: str) -> Any:
        engine = self.engine
        current = engine.runner
        if precision == current.precision:
            model = current.model
        elif precision == "fp32":
            model = self._fp32_base()
        else:
            model = convert_model(self._fp32_base(), precision, self.device)
        forward = None if backend == "eager" else apply_backend(model, backend, self.device)
        plan = precision_plan(precision, self.device)
        runner = engine.build_runner(model, precision=precision, backend=backend, forward=forward, kv_dtype=plan.kv_dtype)
        self.last_warmup_seconds = warm_up_runner(runner, engine.model_config, int(engine.config.block_size))
        logger.info("built runner precision=%s backend=%s (warm-up %.2f s)", precision, backend, self.last_warmup_seconds)
        return runner

    def accuracy_check(self, precision: str) -> tuple[bool, dict[str, Any]]:
        if precision == "fp32":
            return True, {"precision": "fp32", "passed": True}
        cached = self._accuracy_cache.get(precision)
        if cached is not None:
            return cached
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            return False, {"error": "the engine has no tokenizer to build the prompt set"}
        sequences = tokenize_texts(tokenizer, fixed_prompt_texts(self.accuracy_prompts), 128)
        report = check_precision(self._fp32_base(), sequences, precision, self.device, self.thresholds)
        result = (report.passed, report.to_dict())
        self._accuracy_cache[precision] = result
        return result

    # ---- applying (on the engine thread)

    def install(self, live_values: Mapping[str, Any], runner: Any | None, swap_values: Mapping[str, Any]) -> None:
        def apply_between_steps() -> None:
            engine = self.engine
            if runner is not None:
                new_runner = runner
                if new_runner.num_blocks != engine.runner.num_blocks:  # the pool was resized meanwhile
                    new_runner = engine.build_runner(
                        runner.model, precision=runner.precision, backend=runner.backend,
                        forward=runner.forward, kv_dtype=runner.kv_dtype,
                    )
                engine.swap_runner(new_runner)
                engine._apply_pending_runner()
                engine.config.precision = new_runner.precision
                engine.config.backend = new_runner.backend
                self.runner_swaps_total += 1
            if "max_batch_size" in live_values:
                engine.config.max_batch_size = int(live_values["max_batch_size"])
                engine.scheduler.max_batch_size = int(live_values["max_batch_size"])  # also ends an OOM cut
            if "max_num_batched_tokens" in live_values:
                engine.config.max_num_batched_tokens = int(live_values["max_num_batched_tokens"])
                engine.scheduler.max_num_batched_tokens = int(live_values["max_num_batched_tokens"])
            blocks = live_values.get("kv_cache_blocks")
            if "kv_cache_memory_fraction" in live_values and self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                blocks = max(1, int(float(live_values["kv_cache_memory_fraction"]) * total) // kv_block_bytes(engine))
            if blocks is not None:
                self.resizer.resize(int(blocks))
                engine.config.kv_cache_blocks = int(blocks)

        future = self.async_engine.run_between_steps(apply_between_steps)
        future.result(timeout=INSTALL_TIMEOUT_SECONDS)


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def attach_knobs(app: Any, async_engine: Any, config: Any) -> Any:
    """Wire /control, the knob gauges and the knob metrics into the server app; returns the controller.

    Where /control listens: on the main app when the server binds a loopback address (the default
    127.0.0.1); when the OpenAI API binds a wider address, /control is NOT mounted there and gets its own
    listener on 127.0.0.1:`control_port` (DSSIDECAR_CONTROL_PORT; none configured -> no control API), so
    the knobs are never reachable from the network by default.
    """
    from dssidecar.api.app import set_knob_values
    from dssidecar.api.control import build_control_app, build_control_router, resolve_control_token
    from dssidecar.knob_metrics import KnobMetricsCollector
    from dssidecar.knobs import KnobController

    if not hasattr(async_engine, "engine") or not hasattr(async_engine, "run_between_steps"):
        logger.warning("engine %s has no live knobs; /control is not mounted", type(async_engine).__name__)
        return None
    thresholds = Thresholds(
        min_agreement=float(getattr(config, "accuracy_min_agreement", Thresholds.min_agreement)),
        max_kl=float(getattr(config, "accuracy_max_kl", Thresholds.max_kl)),
        max_ppl_delta=float(getattr(config, "accuracy_max_ppl_delta", Thresholds.max_ppl_delta)),
    )
    target = EngineKnobTarget(async_engine, model_path=getattr(config, "model", None), thresholds=thresholds)
    controller = KnobController(target, require_accuracy_check=bool(getattr(config, "require_accuracy_check", False)))
    token = resolve_control_token(
        getattr(config, "control_token", None), getattr(config, "control_token_file", None)
    )
    set_knob_values(app, controller.values)
    registry = getattr(app.state, "metrics_registry", None)
    if registry is not None:
        registry.register(KnobMetricsCollector(controller, include_values=False))
    host = str(getattr(config, "host", "127.0.0.1"))
    control_port = getattr(config, "control_port", None)
    if _is_loopback(host) and not control_port:
        app.include_router(build_control_router(controller, token))
    elif control_port:
        app.state.control_server = _serve_control_in_thread(build_control_app(controller, token), int(control_port))
    else:
        logger.warning(
            "host %s is not loopback and no control_port is set: /control is disabled (set DSSIDECAR_CONTROL_PORT)",
            host,
        )
    app.state.knob_controller = controller
    return controller


def _serve_control_in_thread(control_app: Any, port: int) -> Any:
    """A uvicorn server on 127.0.0.1:port in a daemon thread; set `.should_exit = True` to stop it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(control_app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="dssidecar-control", daemon=True)
    thread.start()
    logger.info("/control listening on http://127.0.0.1:%d", port)
    return server
