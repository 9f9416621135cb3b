"""A small client for the two Kibana saved-objects calls the agent needs, plus the status check `doctor` uses.

    POST {kibana}[/s/{space}]/api/saved_objects/_import?overwrite=true   multipart field `file` (NDJSON)
    POST {kibana}[/s/{space}]/api/saved_objects/_export                  {"objects": [...], ...} -> NDJSON
    GET  {kibana}/api/status

Every call sends `kbn-xsrf: true` (Kibana refuses state-changing calls without it) and the configured
credentials (an API key as `Authorization: ApiKey ...`, or basic auth). The transport is injectable so
tests can use `httpx.MockTransport`; the integration tests use the fake Kibana in tests/fakes/kibana.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_SPACE = "default"


class KibanaError(RuntimeError):
    """Kibana could not be reached or refused the call; the message says which URL and why."""


@dataclass(frozen=True)
class KibanaAuth:
    api_key: str | None = None
    username: str | None = None
    password: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"ApiKey {self.api_key}"} if self.api_key else {}

    def basic(self) -> tuple[str, str] | None:
        if self.username is not None and self.password is not None and not self.api_key:
            return (self.username, self.password)
        return None


@dataclass
class ObjectResult:
    """One saved object's outcome of an import."""

    type: str
    id: str
    title: str
    ok: bool
    error: str = ""


@dataclass
class ImportReport:
    success: bool
    results: list[ObjectResult] = field(default_factory=list)

    @property
    def errors(self) -> list[ObjectResult]:
        return [result for result in self.results if not result.ok]


def space_prefix(space: str | None) -> str:
    """'' for the default space, '/s/<space>' otherwise (Kibana's URL form for spaces)."""
    if not space or space == DEFAULT_SPACE:
        return ""
    return f"/s/{space}"


def _describe_error(error: dict[str, Any]) -> str:
    kind = str(error.get("type", "error"))
    if kind == "missing_references":
        missing = ", ".join(f"{ref.get('type')}/{ref.get('id')}" for ref in error.get("references", []))
        return f"missing_references: {missing}"
    if kind == "unknown" and error.get("message"):
        return f"unknown: {error['message']}"
    if kind == "conflict":
        return "conflict (exists already; install uses overwrite=true, so this means another space or type owns the id)"
    return kind + (f": {error['message']}" if error.get("message") else "")


class KibanaClient:
    def __init__(self, url: str, auth: KibanaAuth | None = None, space: str | None = None,
                 ca_certs: Path | None = None, timeout_seconds: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise KibanaError(f"Kibana URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.space = space or DEFAULT_SPACE
        auth = auth or KibanaAuth()
        verify: bool | str = str(ca_certs) if ca_certs else True
        self._client = httpx.Client(base_url=self.url, headers={"kbn-xsrf": "true", **auth.headers()},
                                    auth=auth.basic(), verify=verify, timeout=timeout_seconds, transport=transport)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KibanaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        full = space_prefix(self.space) + path
        try:
            response = self._client.post(full, **kwargs)
        except httpx.HTTPError as exc:
            raise KibanaError(f"cannot reach Kibana at {self.url}: {exc}") from None
        if response.status_code in (401, 403):
            raise KibanaError(f"Kibana refused {full} with HTTP {response.status_code}: check --api-key or "
                              "--username/--password and the user's saved-objects privileges")
        if response.status_code == 404 and self.space != DEFAULT_SPACE:
            raise KibanaError(f"Kibana answered 404 for {full}: does the space {self.space!r} exist?")
        if response.status_code >= 400:
            raise KibanaError(f"Kibana answered HTTP {response.status_code} for {full}: {response.text[:300]}")
        return response

    def import_objects(self, ndjson_text: str, overwrite: bool = True) -> ImportReport:
        """Import saved objects; the report lists each object's success or error."""
        response = self._post("/api/saved_objects/_import", params={"overwrite": "true" if overwrite else "false"},
                              files={"file": ("dsagent.ndjson", ndjson_text.encode(), "application/ndjson")})
        body = response.json()
        results = [ObjectResult(str(item.get("type")), str(item.get("id")),
                                str((item.get("meta") or {}).get("title", "")), True)
                   for item in body.get("successResults", [])]
        results += [ObjectResult(str(item.get("type")), str(item.get("id")), str(item.get("title", "")), False,
                                 _describe_error(item.get("error") or {}))
                    for item in body.get("errors", [])]
        return ImportReport(bool(body.get("success")) and not body.get("errors"), results)

    def export_objects(self, objects: list[tuple[str, str]]) -> str:
        """The NDJSON Kibana exports for these (type, id) pairs and everything they reference."""
        response = self._post("/api/saved_objects/_export", json={
            "objects": [{"type": object_type, "id": object_id} for object_type, object_id in objects],
            "includeReferencesDeep": True, "excludeExportDetails": False})
        return response.text

    def status(self) -> dict[str, Any]:
        """GET /api/status (needs authentication on a secured Kibana: proves the credentials too)."""
        try:
            response = self._client.get("/api/status")
        except httpx.HTTPError as exc:
            raise KibanaError(f"cannot reach Kibana at {self.url}: {exc}") from None
        if response.status_code in (401, 403):
            raise KibanaError(f"Kibana at {self.url} refused the credentials (HTTP {response.status_code})")
        if response.status_code >= 400:
            raise KibanaError(f"Kibana at {self.url} answered HTTP {response.status_code} for /api/status")
        payload: dict[str, Any] = response.json()
        return payload
