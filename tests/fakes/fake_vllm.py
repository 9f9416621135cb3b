"""A fake `vllm serve` process: takes vLLM's engine arguments, serves /readyz, /health, /v1/models and a
vLLM-named /metrics, and shows the arguments it started with (so a test sees a drained restart took effect).

    python tests/fakes/fake_vllm.py serve MODEL --port P [--max-num-seqs N] [--max-num-batched-tokens N]
        [--dtype D] [--quantization Q] [--gpu-memory-utilization F] [--tensor-parallel-size N]
        [--ready-after S]

Like vLLM it refuses bad arguments at start-up: --max-num-seqs 0 or --gpu-memory-utilization outside (0, 1]
exit 1 with vLLM's kind of message before ever becoming ready. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--ready-after", type=float, default=0.2)
    args = parser.parse_args(argv)
    if args.max_num_seqs < 1:
        print(f"ValueError: max_num_seqs ({args.max_num_seqs}) must be at least 1", file=sys.stderr, flush=True)
        return 1
    if not 0 < args.gpu_memory_utilization <= 1:
        print(f"ValueError: GPU memory utilization must be within (0, 1]. Got {args.gpu_memory_utilization}.",
              file=sys.stderr, flush=True)
        return 1
    started = time.monotonic()
    engine_args = {k: v for k, v in vars(args).items() if k not in ("command", "host", "port", "ready_after")}
    metrics = (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="{args.model}"}} 0.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="{args.model}"}} 0.0\n'
        "# TYPE vllm:cache_config_info gauge\n"
        f'vllm:cache_config_info{{gpu_memory_utilization="{args.gpu_memory_utilization}",'
        f'max_num_seqs="{args.max_num_seqs}"}} 1.0\n'
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            ready = time.monotonic() - started >= args.ready_after
            if self.path in ("/readyz", "/health"):
                self._send(200 if ready else 503, "text/plain", b"ok" if ready else b"starting")
            elif self.path == "/metrics":
                self._send(200, "text/plain; version=0.0.4", metrics.encode())
            elif self.path == "/engine_args":
                self._send(200, "application/json", json.dumps(engine_args).encode())
            elif self.path == "/v1/models":
                self._send(200, "application/json", json.dumps({"data": [{"id": args.model}]}).encode())
            else:
                self._send(404, "text/plain", b"not found")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: object) -> None:  # noqa: A002
            return None

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"fake vllm serving {args.model} on {args.port} with {engine_args}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
