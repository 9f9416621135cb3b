"""`dssidecar` command line: serve | demo-model | check-precision.

Every option maps to an environment variable DSSIDECAR_<OPTION> (for example --port <-> DSSIDECAR_PORT).
Heavy imports (torch) happen inside the commands so `--help` is instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    name="dssidecar",
    help="Continuous-batching LLM inference server with an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Continuous-batching LLM inference server with an OpenAI-compatible API."""


@app.command("demo-model")
def demo_model(
    path: Path = typer.Argument(..., help="Directory to write the checkpoint into."),
    size: str = typer.Option("tiny", "--size", envvar="DSSIDECAR_SIZE", help="tiny (tests) or small (~50-100M params, benchmarks)."),
    seed: int = typer.Option(0, "--seed", envvar="DSSIDECAR_SEED", help="Seed: the same seed writes the same checkpoint."),
    arch: str = typer.Option("qwen2", "--arch", envvar="DSSIDECAR_ARCH", help="qwen2 or llama."),
    train_steps: int = typer.Option(0, "--train-steps", envvar="DSSIDECAR_TRAIN_STEPS", help="CPU training steps on local text so the model has real structure."),
) -> None:
    """Write a small Llama/Qwen2 checkpoint with a locally trained tokenizer and a sha256 manifest."""
    from dssidecar.demo_model import write_demo_model

    write_demo_model(path, size=size, seed=seed, arch=arch, train_steps=train_steps)


@app.command("check-precision")
def check_precision_command(
    model: Path = typer.Option(..., "--model", envvar="DSSIDECAR_MODEL", help="Checkpoint directory (loaded in fp32)."),
    precision: str = typer.Option("int8", "--precision", envvar="DSSIDECAR_PRECISION", help="bf16, fp16, int8, int8_weight_only or fp8."),
    device: str = typer.Option("auto", "--device", envvar="DSSIDECAR_DEVICE", help="auto, cpu, cuda or cuda:N."),
    max_kl: float = typer.Option(0.05, "--max-kl", envvar="DSSIDECAR_MAX_KL", help="Largest mean KL(fp32 || candidate) in nats."),
    min_agreement: float = typer.Option(0.90, "--min-agreement", envvar="DSSIDECAR_MIN_AGREEMENT", help="Smallest teacher-forced top-1 agreement (0..1)."),
    max_ppl_delta: float = typer.Option(0.05, "--max-ppl-delta", envvar="DSSIDECAR_MAX_PPL_DELTA", help="Largest relative perplexity increase (0.05 = +5%)."),
    num_prompts: int = typer.Option(16, "--num-prompts", envvar="DSSIDECAR_NUM_PROMPTS", help="Prompts in the fixed set."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON to this file."),
) -> None:
    """Compare fp32 with PRECISION on a fixed prompt set; exit 1 past the thresholds, 2 if unsupported."""
    import json

    from dssidecar.check_precision import Thresholds, check_precision_for_model_dir, format_report
    from dssidecar.precision import UnsupportedPrecisionError

    thresholds = Thresholds(min_agreement=min_agreement, max_kl=max_kl, max_ppl_delta=max_ppl_delta)
    try:
        report = check_precision_for_model_dir(model, precision, device, thresholds, num_prompts=num_prompts)
    except UnsupportedPrecisionError as exc:
        typer.echo(f"check-precision: {exc}", err=True)
        raise typer.Exit(2) from None
    except (OSError, ValueError) as exc:
        typer.echo(f"check-precision: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_report(report))
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    if not report.passed:
        raise typer.Exit(1)


@app.command("serve")
def serve_command(
    model: Path = typer.Option(None, "--model", help="Checkpoint directory. Env: DSSIDECAR_MODEL."),
    host: str = typer.Option(None, "--host", help="Interface to bind (default 127.0.0.1). Env: DSSIDECAR_HOST."),
    port: int = typer.Option(None, "--port", help="TCP port (default 8000). Env: DSSIDECAR_PORT."),
    served_model_name: str = typer.Option(
        None, "--served-model-name", help="Name clients send as `model` (default: the directory name). Env: DSSIDECAR_SERVED_MODEL_NAME."
    ),
    max_batch_size: int = typer.Option(None, "--max-batch-size", help="Env: DSSIDECAR_MAX_BATCH_SIZE."),
    max_num_batched_tokens: int = typer.Option(None, "--max-num-batched-tokens", help="Env: DSSIDECAR_MAX_NUM_BATCHED_TOKENS."),
    kv_cache_blocks: int = typer.Option(None, "--kv-cache-blocks", help="KV pool size in blocks (default: auto). Env: DSSIDECAR_KV_CACHE_BLOCKS."),
    block_size: int = typer.Option(None, "--block-size", help="Tokens per KV block. Env: DSSIDECAR_BLOCK_SIZE."),
    max_waiting_requests: int = typer.Option(None, "--max-waiting-requests", help="Queue length before 429. Env: DSSIDECAR_MAX_WAITING_REQUESTS."),
    max_model_len: int = typer.Option(None, "--max-model-len", help="Context length cap. Env: DSSIDECAR_MAX_MODEL_LEN."),
    precision: str = typer.Option(None, "--precision", help="fp32, bf16, fp16, int8 or fp8. Env: DSSIDECAR_PRECISION."),
    backend: str = typer.Option(None, "--backend", help="eager, torch.compile or tensorrt. Env: DSSIDECAR_BACKEND."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N. Env: DSSIDECAR_DEVICE."),
    num_threads: int = typer.Option(None, "--num-threads", help="CPU threads for torch. Env: DSSIDECAR_NUM_THREADS."),
    otlp_endpoint: str = typer.Option(
        None, "--otlp-endpoint", help="OTLP/HTTP base URL for request logs and spans (off by default). Env: DSSIDECAR_OTLP_ENDPOINT."
    ),
    shutdown_grace_seconds: float = typer.Option(
        None, "--shutdown-grace-seconds", help="SIGTERM: time in-flight requests may take (default 30). Env: DSSIDECAR_SHUTDOWN_GRACE_SECONDS."
    ),
    max_request_body_bytes: int = typer.Option(
        None, "--max-request-body-bytes", help="Larger request bodies get 413 (default 8 MiB). Env: DSSIDECAR_MAX_REQUEST_BODY_BYTES."
    ),
    control_token_file: Path = typer.Option(
        None, "--control-token-file", help="File with the /control bearer token. Env: DSSIDECAR_CONTROL_TOKEN_FILE."
    ),
    control_port: int = typer.Option(
        None, "--control-port", help="Serve /control on 127.0.0.1:PORT (needed when --host is not loopback). Env: DSSIDECAR_CONTROL_PORT."
    ),
    require_accuracy_check: bool = typer.Option(
        None, "--require-accuracy-check/--no-require-accuracy-check",
        help="Check accuracy before a live precision switch. Env: DSSIDECAR_REQUIRE_ACCURACY_CHECK.",
    ),
    log_level: str = typer.Option(None, "--log-level", help="debug, info, warning, error. Env: DSSIDECAR_LOG_LEVEL."),
) -> None:
    """Serve a checkpoint over the OpenAI API (/v1/completions, /v1/chat/completions) with /metrics and /readyz."""
    from pydantic import ValidationError

    from dssidecar.api.server import ModelLoadError, serve
    from dssidecar.config import ServerConfig

    flags = {name: value for name, value in locals().items() if name not in ("ValidationError", "ModelLoadError", "serve", "ServerConfig")}
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        config = ServerConfig(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "settings"
        typer.echo(f"dssidecar serve: --{where.replace('_', '-')}: {first.get('msg')}", err=True)
        raise typer.Exit(2) from None
    try:
        status = serve(config)
    except ModelLoadError as exc:
        typer.echo(f"dssidecar serve: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(status)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
