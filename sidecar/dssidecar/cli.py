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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
