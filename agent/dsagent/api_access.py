"""Who may read what on the agent's API when it listens beyond loopback.

Why: Kubernetes/Prometheus scraping needs `server.host: 0.0.0.0`, and /metrics is meant for that; but
/api/status names the data dir, the engine's command line and export errors, and /api/actions changes the
engine. On a non-loopback bind those need `Authorization: Bearer <server token>` (configured as
server.token, else generated at start and written with owner-only permissions to data_dir/agent.json,
where `dsagent status` on the node reads it). Everything else is said once in a warning at start.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

PROTECTED_PREFIXES = ("/api/status", "/api/actions", "/api/page/events")  # the page's stream carries the status


def require_token_beyond_loopback(app: FastAPI, token: str, url: str) -> None:
    """Make the protected routes answer 401 without the bearer token; warn that the rest is exposed."""
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def _check(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith(PROTECTED_PREFIXES) and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), expected):
            return JSONResponse({"error": "this route needs Authorization: Bearer <server token> when the API "
                                          "listens beyond loopback"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    log.warning("the agent API listens on %s, reachable from the network: /metrics is meant for that; %s need "
                "the server token; every other route (the page, the Prometheus query API) is readable by "
                "anyone who reaches it", url, " and ".join(PROTECTED_PREFIXES))
