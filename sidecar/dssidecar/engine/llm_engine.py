"""The synchronous engine: `step()` = schedule -> run -> postprocess.

Owns the scheduler (with its block manager), the model runner and the tokenizer. Postprocess appends
sampled tokens, decides when a request is finished (EOS, stop token ids, stop strings, max_tokens,
context length), detokenizes incrementally and returns one `RequestOutput` delta per request that
advanced. It is single-threaded by design: AsyncLLMEngine calls it from one background thread and
funnels additions, aborts and knob changes in between steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from collections.abc import Sequence as SequenceType
from pathlib import Path
from typing import Any

import torch

from dssidecar.device import configure_cpu_threads, device_memory_available_bytes, resolve_device
from dssidecar.engine.block_manager import BlockManager
from dssidecar.engine.config import EngineConfig
from dssidecar.engine.memory import memory_figures
from dssidecar.engine.model_runner import ModelRunner, kv_cache_bytes_per_block
from dssidecar.engine.oom_guard import FaultInjector, OomGuard
from dssidecar.engine.protocol import (
    InvalidRequestError,
    QueueFullError,
    RequestOutput,
    RequestTooLongError,
    SamplingParams,
)
from dssidecar.engine.sampling import make_generator
from dssidecar.engine.scheduler import ScheduledBatch, Scheduler
from dssidecar.engine.sequence import Sequence, SequenceStatus
from dssidecar.engine.warmup import warm_up_runner
from dssidecar.models.config import ModelConfig
from dssidecar.models.tokenizer import HFTokenizer, IncrementalDetokenizer

logger = logging.getLogger("dssidecar.engine")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def auto_kv_cache_blocks(
    model_config: ModelConfig, config: EngineConfig, device: torch.device, dtype: torch.dtype
) -> int:
    """Blocks that fit the memory budget, at least enough for one max-length sequence."""
    block_bytes = kv_cache_bytes_per_block(model_config, config.block_size, dtype)
    available_bytes = device_memory_available_bytes(device)
    if device.type == "cuda":
        budget_bytes = int(available_bytes * config.kv_cache_gpu_memory_fraction)
    else:
        budget_bytes = min(int(available_bytes * config.kv_cache_memory_fraction), config.kv_cache_memory_max_bytes)
    max_model_len = config.max_model_len or model_config.max_position_embeddings
    minimum = math.ceil(max_model_len / config.block_size) + 1
    return max(budget_bytes // block_bytes, minimum)


class LLMEngine:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: HFTokenizer | None,
        model_config: ModelConfig,
        config: EngineConfig,
        model_name: str = "model",
    ) -> None:
        config.validate()
        self.config = config
        self.model_config = model_config
        self.model_name = model_name
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_model_len = min(config.max_model_len or model_config.max_position_embeddings,
                                 model_config.max_position_embeddings)
        self.block_manager = BlockManager(runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_batch_size, config.max_num_batched_tokens)
        eos = list(tokenizer.eos_token_ids) if tokenizer is not None else list(model_config.eos_token_ids)
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        self._requests: dict[str, Sequence] = {}
        self._pending_runner: ModelRunner | None = None
        # a KV pool shrink waiting for sequences to release blocks above this size (None: none pending)
        self._kv_target_blocks: int | None = None
        # retries a step with a smaller batch on out-of-memory (and lowers the effective batch limit)
        self.oom_guard = OomGuard(FaultInjector.from_env())
        self._current_batch: ScheduledBatch | None = None
        # counters for /metrics
        self.steps_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_finished_total = 0

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_model_path(cls, model_path: str | Path, config: EngineConfig | None = None) -> LLMEngine:
        """Load a local checkpoint (manifest verified) and build an engine on the configured device."""
        from dssidecar.models.loader import load_checkpoint

        config = config or EngineConfig()
        config.validate()
        device = resolve_device(config.device)
        if device.type == "cpu":
            configure_cpu_threads(config.num_threads)
        from dssidecar.precision import convert_model, precision_plan

        # raises UnsupportedPrecisionError with the reason (e.g. fp8 on a CPU) before loading anything
        plan = precision_plan(config.precision, device)
        dense = plan.weight_format == "dense"
        load_dtype = plan.activation_dtype if dense else torch.float32
        checkpoint = load_checkpoint(model_path, device=device, dtype=load_dtype)
        model: torch.nn.Module = checkpoint.model
        if not dense:  # int8 / fp8 weights: quantize the fp32 model (helper module dssidecar.precision)
            model = convert_model(model, config.precision, device)
        dtype = plan.kv_dtype
        forward = None
        if config.backend != "eager":
            from dssidecar.backends.registry import apply_backend

            forward = apply_backend(model, config.backend, device)
        num_blocks = config.kv_cache_blocks or auto_kv_cache_blocks(checkpoint.config, config, device, dtype)
        runner = ModelRunner(
            model,
            checkpoint.config,
            num_blocks=num_blocks,
            block_size=config.block_size,
            device=device,
            kv_dtype=dtype,
            forward=forward,
            precision=config.precision,
            backend=config.backend,
        )
        name = config.model_name or Path(model_path).resolve().name
        logger.info("engine ready: model=%s device=%s kv_blocks=%d (%.1f MiB)", name, device, num_blocks,
                    runner.kv_cache_bytes / 2**20)
        return cls(runner, checkpoint.tokenizer, checkpoint.config, config, model_name=name)

    # ---- requests -------------------------------------------------------------------------------
    def validate_request(self, prompt_token_ids: SequenceType[int], params: SamplingParams) -> None:
        """Raise the error a request would get at admission (no state changes)."""
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty; give at least one token")
        if params.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {params.max_tokens}")
        vocab_size = self.model_config.vocab_size
        bad = next((t for t in prompt_token_ids if not 0 <= int(t) < vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"prompt token id {bad} is outside the vocabulary [0, {vocab_size})")
        if not (math.isfinite(params.temperature) and params.temperature >= 0) or not 0 < params.top_p <= 1:
            raise InvalidRequestError(
                f"temperature must be a finite number >= 0 and top_p in (0, 1]; got {params.temperature}, {params.top_p}"
            )
        if not -1 <= params.top_k <= vocab_size:
            raise InvalidRequestError(f"top_k must be -1, 0 or 1..{vocab_size} (the vocabulary), got {params.top_k}")
        if params.seed is not None and not INT64_MIN <= params.seed <= INT64_MAX:
            raise InvalidRequestError(f"seed must be a signed 64-bit integer, got {params.seed}")
        total = len(prompt_token_ids) + params.max_tokens
        if total > self.max_model_len:
            raise RequestTooLongError(
                f"prompt ({len(prompt_token_ids)} tokens) + max_tokens ({params.max_tokens}) = {total} "
                f"exceeds the model's context length of {self.max_model_len} tokens"
            )
        blocks_needed = math.ceil(total / self.config.block_size)
        if blocks_needed > self.block_manager.num_blocks:
            raise RequestTooLongError(
                f"prompt + max_tokens = {total} tokens needs {blocks_needed} KV blocks but the pool holds only "
                f"{self.block_manager.num_blocks}; raise kv_cache_blocks or lower max_tokens"
            )

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: SequenceType[int],
        params: SamplingParams,
        arrival_time: float | None = None,
    ) -> Sequence:
        self.validate_request(prompt_token_ids, params)
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        if self.num_waiting >= self.config.max_waiting_requests:
            raise QueueFullError(
                f"{self.num_waiting} requests are waiting (max_waiting_requests={self.config.max_waiting_requests})"
            )
        seq = Sequence(
            request_id=request_id,
            token_ids=[int(t) for t in prompt_token_ids],
            params=params,
            arrival_time=time.monotonic() if arrival_time is None else arrival_time,
            block_size=self.config.block_size,
            generator=make_generator(params.seed, self.runner.device),
        )
        if self.tokenizer is not None:
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, seq.token_ids)
        self._requests[request_id] = seq
        self.scheduler.add(seq)
        return seq

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks; returns its final delta, or None if it is unknown."""
        seq = self._requests.get(request_id)
        if seq is None:
            return None
        return self._finish(seq, "abort")

    def fail_requests(self, seqs: SequenceType[Sequence], error: str) -> list[RequestOutput]:
        """End requests with an error (used when a step raised)."""
        outputs = []
        for seq in seqs:
            if seq.request_id in self._requests:
                seq.error = error
                outputs.append(self._finish(seq, "abort"))
        return outputs

    def fail_current_batch(self, error: str) -> list[RequestOutput]:
        batch = self._current_batch
        self._current_batch = None
        return self.fail_requests(batch.seqs if batch else [], error)

    def abort_all(self) -> list[RequestOutput]:
        return [self._finish(seq, "abort") for seq in list(self._requests.values())]

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    # ---- runner swap (precision / backend knobs) ----------------------------------------------
    def build_runner(
        self,
        model: torch.nn.Module,
        *,
        precision: str,
        backend: str = "eager",
        forward: Callable[..., Any] | None = None,
        kv_dtype: torch.dtype | None = None,
    ) -> ModelRunner:
        """A runner for another model variant with the same pool geometry. When the KV dtype is the same
        the new runner shares the current pool (no extra memory, no recompute)."""
        current = self.runner
        kv_dtype = kv_dtype or current.kv_dtype
        shared = current.kv_cache if kv_dtype == current.kv_dtype else None
        return ModelRunner(
            model,
            self.model_config,
            num_blocks=current.num_blocks,
            block_size=current.block_size,
            device=current.device,
            kv_dtype=kv_dtype,
            forward=forward,
            precision=precision,
            backend=backend,
            kv_cache=shared,
        )

    def swap_runner(self, new_runner: ModelRunner) -> None:
        """Switch to `new_runner` before the next step (never in the middle of one)."""
        if new_runner.block_size != self.runner.block_size:
            raise ValueError(
                f"new runner has blocks of {new_runner.block_size} tokens; the engine's pool has blocks of "
                f"{self.runner.block_size}"
            )
        self._pending_runner = new_runner

    def replace_runner(self, new_runner: ModelRunner) -> ModelRunner:
        """Switch to `new_runner` now (call between steps: AsyncLLMEngine.run_between_steps). When the pool
        was resized since the runner was built, a runner of the same model over the current pool is used.
        Returns the runner that serves from now on."""
        self.swap_runner(new_runner)
        return self._apply_pending_runner()

    def _apply_pending_runner(self) -> ModelRunner:
        new_runner, self._pending_runner = self._pending_runner, None
        if new_runner is None:
            return self.runner
        old_runner = self.runner
        if new_runner.num_blocks != old_runner.num_blocks:  # the pool was resized meanwhile
            new_runner = self.build_runner(
                new_runner.model, precision=new_runner.precision, backend=new_runner.backend,
                forward=new_runner.forward, kv_dtype=new_runner.kv_dtype,
            )
        if new_runner.kv_cache.data_ptr() != old_runner.kv_cache.data_ptr():
            # a different pool (other KV dtype): in-flight sequences are recomputed from their tokens
            for seq in list(self.scheduler.running)[::-1]:
                self.scheduler.running.remove(seq)
                self.scheduler.preempt(seq)
            for seq in self.scheduler.waiting:
                if seq.block_table:
                    self.block_manager.deallocate(seq)
            self.block_manager.forget_cached_prefixes()  # they live in the old pool
        for seq in self._requests.values():
            if seq.generator is not None and seq.generator.device != new_runner.device:
                seq.generator = make_generator(seq.params.seed, new_runner.device)
        self.runner = new_runner
        self.config.precision = new_runner.precision
        self.config.backend = new_runner.backend
        logger.info("runner swapped: precision=%s backend=%s", new_runner.precision, new_runner.backend)
        return new_runner

    def warm_up(self, runner: ModelRunner) -> float:
        """Warm a runner built with build_runner() on a scratch pool (never the live one); seconds taken."""
        return warm_up_runner(runner, self.model_config, int(self.config.block_size))

    # ---- live limits and the KV pool (the knobs; call between steps) ---------------------------
    def set_limits(self, *, max_batch_size: int | None = None, max_num_batched_tokens: int | None = None) -> None:
        """Change the scheduler's limits from the next step. Setting max_batch_size also ends a cut the
        OOM guard made (the effective limit returns to the configured one)."""
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_num_batched_tokens is not None and max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}")
        if max_batch_size is not None:
            self.config.max_batch_size = int(max_batch_size)
            self.scheduler.max_batch_size = int(max_batch_size)
        if max_num_batched_tokens is not None:
            self.config.max_num_batched_tokens = int(max_num_batched_tokens)
            self.scheduler.max_num_batched_tokens = int(max_num_batched_tokens)

    @property
    def effective_max_batch_size(self) -> int:
        """The batch limit the scheduler uses now (below the configured one after an out-of-memory)."""
        return int(self.scheduler.max_batch_size)

    @property
    def oom_events_total(self) -> int:
        return int(self.oom_guard.oom_events_total)

    @property
    def kv_cache_blocks(self) -> int:
        """The pool size the engine works towards (the knob's value; a shrink may still be pending)."""
        return self._kv_target_blocks if self._kv_target_blocks is not None else int(self.runner.num_blocks)

    @property
    def kv_cache_blocks_pending_release(self) -> int:
        """Blocks above a pending shrink's target that sequences still hold."""
        if self._kv_target_blocks is None:
            return 0
        return self.block_manager.num_held_from(self._kv_target_blocks)

    def resize_kv_pool(self, num_blocks: int) -> int:
        """Resize the KV pool to `num_blocks` (call between steps); returns the blocks still pending release.

        Growing allocates a larger pool at once (old blocks copied). Shrinking never touches a block a
        sequence holds: free blocks above the new size are retired now, held ones as their sequences
        finish, and the tensor is cut when none is left (checked before every step)."""
        if num_blocks < 1:
            raise ValueError(f"kv_cache_blocks must be >= 1, got {num_blocks}")
        current = int(self.runner.num_blocks)
        if self._kv_target_blocks is not None:  # a shrink was pending: blocks it retired below the new size return
            self.block_manager.restore_retired_below(min(num_blocks, current))
        self.config.kv_cache_blocks = int(num_blocks)
        if num_blocks >= current:
            self._kv_target_blocks = None
            if num_blocks > current:
                self.runner.resize_pool(num_blocks)
                self.block_manager.grow(num_blocks)
                logger.info("KV pool grown from %d to %d blocks", current, num_blocks)
            return 0
        self._kv_target_blocks = num_blocks
        self._continue_kv_shrink()
        return self.kv_cache_blocks_pending_release

    def _continue_kv_shrink(self) -> None:
        """Retire freed blocks above a pending shrink's target; cut the pool when none is held any more."""
        target = self._kv_target_blocks
        if target is None:
            return
        self.block_manager.retire_free_blocks_from(target)
        if self.block_manager.num_held_from(target) == 0:
            old_blocks = int(self.runner.num_blocks)
            if target < old_blocks:
                self.runner.resize_pool(target)
                self.block_manager.truncate(target)
                logger.info("KV pool shrunk from %d to %d blocks", old_blocks, target)
            self._kv_target_blocks = None

    def memory_figures(self) -> dict[str, float]:
        """KV pool and device memory figures (bytes, ratios 0..1); see dssidecar.engine.memory."""
        seqs = list(self.scheduler.running) + list(self.scheduler.waiting)
        return memory_figures(self.block_manager, self.runner, seqs)

    # ---- the step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        self._apply_pending_runner()
        self._continue_kv_shrink()
        batch = self.scheduler.schedule()
        if batch is None:
            return self._unblock()
        self._current_batch = batch
        batch, token_ids, failed = self._run_isolating_failures(batch)
        outputs = self._postprocess(batch, token_ids)
        for seq, error in failed:
            if seq.request_id in self._requests:
                seq.error = error
                outputs.append(self._finish(seq, "abort"))
        self._current_batch = None
        self.steps_total += 1
        return outputs

    def _run_isolating_failures(
        self, batch: ScheduledBatch, whole_step: bool = True
    ) -> tuple[ScheduledBatch, list[int], list[tuple[Sequence, str]]]:
        """Run the batch; when it raises, bisect it so only the sequences that fail on their own are
        failed and their batch neighbours still advance (one bad request must not fail the others).

        Re-running a part rewrites the same KV slots (nothing advanced: positions move only in
        postprocess), so the retry is safe. A step of a single sequence raises as it always did (the
        caller fails it). Returns (what ran, its token ids, [(failed seq, error)])."""
        try:
            ran, token_ids = self.oom_guard.run(self, batch)
            return ran, token_ids, []
        except Exception as exc:
            seqs = list(batch.seqs)  # the OOM guard may have cut the batch before the error
            if whole_step and len(seqs) <= 1:
                raise
            if len(seqs) <= 1:
                if seqs:
                    logger.warning("request %s failed in the engine step: %s: %s", seqs[0].request_id,
                                   type(exc).__name__, exc)
                return ScheduledBatch([]), [], [(seq, f"{type(exc).__name__}: {exc}") for seq in seqs]
            logger.warning("a step of %d sequences failed (%s: %s); retrying its halves to isolate the cause",
                           len(seqs), type(exc).__name__, exc)
        half = len(seqs) // 2
        ran_seqs: list[Sequence] = []
        token_ids = []
        failed: list[tuple[Sequence, str]] = []
        for part in (seqs[:half], seqs[half:]):
            part_ran, part_ids, part_failed = self._run_isolating_failures(
                ScheduledBatch(part), whole_step=False
            )
            ran_seqs.extend(part_ran.seqs)
            token_ids.extend(part_ids)
            failed.extend(part_failed)
        return ScheduledBatch(ran_seqs), token_ids, failed

    def _unblock(self) -> list[RequestOutput]:
        """Nothing could be scheduled although requests wait: the head of the queue can never fit the
        pool (it shrank); fail it rather than spin."""
        if self.scheduler.waiting and not self.scheduler.running:
            seq = self.scheduler.waiting[0]
            seq.error = (
                f"request needs {seq.num_blocks} KV blocks but only {self.block_manager.num_free_blocks} "
                f"of {self.block_manager.num_blocks} are free with nothing running"
            )
            return [self._finish(seq, "abort")]
        return []

    def _postprocess(self, batch: ScheduledBatch, token_ids: list[int]) -> list[RequestOutput]:
        now = time.monotonic()
        outputs: list[RequestOutput] = []
        for seq, token_id in zip(batch.seqs, token_ids, strict=True):
            seq.num_cached_tokens += seq.num_scheduled_tokens
            seq.num_scheduled_tokens = 0
            self.block_manager.register_full_blocks(seq)
            if seq.num_cached_tokens < seq.num_tokens:
                continue  # a chunk of a long prompt: no token yet
            seq.token_ids.append(token_id)
            self.generation_tokens_total += 1
            if seq.first_token_time is None:
                seq.first_token_time = now
                self.prompt_tokens_total += seq.num_prompt_tokens
            try:
                finish_reason = self._append_text_and_check_stop(seq, token_id)
            except Exception as exc:  # e.g. the detokenizer: fail this request, not its neighbours
                logger.exception("postprocessing request %s failed", seq.request_id)
                seq.error = f"{type(exc).__name__}: {exc}"
                outputs.append(self._finish(seq, "abort", now))
                continue
            if finish_reason is not None:
                outputs.append(self._finish(seq, finish_reason, now))
            else:
                output = self._delta(seq, finished=False)
                if output is not None:
                    outputs.append(output)
        return outputs

    def _append_text_and_check_stop(self, seq: Sequence, token_id: int) -> str | None:
        params = seq.params
        if token_id in params.stop_token_ids or (not params.ignore_eos and token_id in self.eos_token_ids):
            return "stop"
        if seq.detokenizer is not None:
            seq.output_text += seq.detokenizer.add([token_id])  # type: ignore[attr-defined]
            if params.stop:
                stop_reason = self._check_stop_strings(seq, params.stop)
                if stop_reason:
                    return stop_reason
        if seq.num_completion_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def _check_stop_strings(seq: Sequence, stops: list[str]) -> str | None:
        longest = max(len(s) for s in stops)
        search_from = max(0, seq.num_text_chars_sent - longest)
        text = seq.output_text
        best = -1
        for stop in stops:
            if not stop:
                continue
            index = text.find(stop, search_from)
            if index != -1 and (best == -1 or index < best):
                best = index
        if best == -1:
            return None
        seq.output_text = text[:best]
        return "stop"

    def _delta(self, seq: Sequence, finished: bool) -> RequestOutput | None:
        new_tokens = seq.completion_token_ids[seq.num_tokens_sent :]
        text_end = len(seq.output_text)
        if not finished and seq.params.stop:
            # hold back text that could still turn out to be the start of a stop string
            text_end = max(seq.num_text_chars_sent, text_end - (max(len(s) for s in seq.params.stop) - 1))
        text = seq.output_text[seq.num_text_chars_sent : text_end]
        if not new_tokens and not text and not finished:
            return None
        seq.num_tokens_sent += len(new_tokens)
        seq.num_text_chars_sent = text_end
        return RequestOutput(
            request_id=seq.request_id,
            token_ids=new_tokens,
            text=text,
            finished=finished,
            finish_reason=seq.finish_reason if finished else None,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_completion_tokens,
            arrival_time=seq.arrival_time,
            first_token_time=seq.first_token_time,
            finish_time=seq.finish_time,
            error=seq.error,
        )

    def _finish(self, seq: Sequence, reason: str, now: float | None = None) -> RequestOutput:
        seq.finish_reason = reason  # type: ignore[assignment]
        seq.finish_time = time.monotonic() if now is None else now
        if seq.detokenizer is not None and reason != "abort":
            tail = seq.detokenizer.add([], final=True)  # type: ignore[attr-defined]
            if tail and reason == "length":
                seq.output_text += tail
        if seq.status is not SequenceStatus.FINISHED:
            self.scheduler.finish(seq)
        self._requests.pop(seq.request_id, None)
        self.requests_finished_total += 1
        output = self._delta(seq, finished=True)
        assert output is not None
        return output

    # ---- convenience for tests and benchmarks ---------------------------------------------------
    def generate(
        self,
        prompts: SequenceType[SequenceType[int]],
        params: SamplingParams | SequenceType[SamplingParams],
    ) -> list[list[int]]:
        """Run prompts to completion synchronously; returns the completion token ids of each."""
        params_list = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        ids = [f"generate-{id(self)}-{i}" for i in range(len(prompts))]
        for request_id, prompt, p in zip(ids, prompts, params_list, strict=True):
            self.add_request(request_id, prompt, p)
        results: dict[str, list[int]] = {request_id: [] for request_id in ids}
        while self.has_unfinished_requests():
            for output in self.step():
                if output.request_id in results:
                    results[output.request_id].extend(output.token_ids)
        return [results[request_id] for request_id in ids]
