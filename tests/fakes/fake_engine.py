"""A tiny stand-in for an inference engine process, for supervisor tests.

Serves /readyz (200 once ready, 503 before), /healthz and a small vLLM-style /metrics on 127.0.0.1, and can
be told to exit after a while with a given code or to ignore SIGTERM - the behaviours the supervisor must
handle. Standard library only, so it starts in well under a second.

    python tests/fakes/fake_engine.py --port P [--ready-after S] [--exit-after S] [--exit-code N]
                                       [--ignore-sigterm] [--never-ready]
                                       [--spawn-worker] [--worker-ignores-sigterm]

--spawn-worker starts one child process in the engine's process group (as vLLM's workers are) that prints
"worker pid N" and sleeps; with --worker-ignores-sigterm it survives SIGTERM, as a stuck worker would.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METRICS = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="fake"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="fake"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="fake"} 0.25
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=1)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--spawn-worker", action="store_true")
    parser.add_argument("--worker-ignores-sigterm", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path == "/readyz":
                ready = not args.never_ready and time.monotonic() - started >= args.ready_after
                self._answer(200 if ready else 503, "ready" if ready else "loading")
            elif self.path == "/healthz":
                self._answer(200, "ok")
            elif self.path == "/metrics":
                self._answer(200, METRICS, "text/plain; version=0.0.4")
            else:
                self._answer(404, "not found")

        def _answer(self, code: int, body: str, content_type: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    if args.spawn_worker:
        import subprocess

        ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if args.worker_ignores_sigterm else ""
        worker = subprocess.Popen([sys.executable, "-c", f"import signal, time; {ignore}time.sleep(3600)"])
        print(f"worker pid {worker.pid}", flush=True)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    if args.exit_after is not None:
        def _exit_later() -> None:
            time.sleep(args.exit_after)
            print(f"fake engine exiting with {args.exit_code}", flush=True)
            import os

            os._exit(args.exit_code)

        threading.Thread(target=_exit_later, daemon=True).start()
    print(f"fake engine on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
