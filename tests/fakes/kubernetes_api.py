"""A fake Kubernetes API server on loopback that speaks the real JSON of the scale subresource.

Enough of apps/v1 for `kubectl scale` / the official client: GET and PATCH (JSON patch, merge patch,
strategic merge patch) and PUT of /apis/apps/v1/namespaces/{ns}/{deployments|statefulsets}/{name}/scale,
answering autoscaling/v1 Scale objects with a resourceVersion that moves on every write, and the API
server's Status objects for 404 (NotFound), 409 (Conflict: a stale resourceVersion, or injected) and 403
(Forbidden, naming the verb and resource like RBAC does). Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PATH = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/(deployments|statefulsets)/([^/]+)/scale$")
_SELECTOR = "app.kubernetes.io/name=llm"


@dataclass
class ScalableObject:
    replicas: int
    resource_version: int = 1
    uid: str = "6f1c3a52-0000-4000-8000-000000000001"


@dataclass
class FakeKubernetesApi:
    """objects: {(plural, namespace, name): ScalableObject}; forbid: {(verb, plural)}; conflicts: next N writes."""

    objects: dict[tuple[str, str, str], ScalableObject] = field(default_factory=dict)
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    conflicts_to_inject: int = 0
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    user: str = "system:serviceaccount:dsagent:dsagent"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, plural: str, namespace: str, name: str, replicas: int) -> None:
        self.objects[(plural, namespace, name)] = ScalableObject(replicas)

    def replicas(self, plural: str, namespace: str, name: str) -> int:
        return self.objects[(plural, namespace, name)].replicas

    # ---- wire format ---------------------------------------------------------------------------------

    def scale_json(self, plural: str, namespace: str, name: str, obj: ScalableObject) -> dict[str, Any]:
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": name, "namespace": namespace, "uid": obj.uid,
                         "resourceVersion": str(obj.resource_version), "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"replicas": obj.replicas},
            "status": {"replicas": obj.replicas, "selector": _SELECTOR},
        }

    @staticmethod
    def status_json(code: int, reason: str, message: str, name: str, plural: str) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "details": {"name": name, "group": "apps", "kind": plural}, "code": code}

    def handle(self, method: str, path: str, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path.split("?", 1)[0])
        parsed = json.loads(body) if body else None
        with self._lock:
            self.requests.append((method, path, parsed))
            if match is None:
                return 404, self.status_json(404, "NotFound", "the server could not find the requested resource", "", "")
            namespace, plural, name = match.groups()
            verb = {"GET": "get", "PATCH": "patch", "PUT": "update"}.get(method, method.lower())
            if (verb, plural) in self.forbidden:
                message = (f'{plural}.apps "{name}" is forbidden: User "{self.user}" cannot {verb} resource '
                           f'"{plural}/scale" in API group "apps" in the namespace "{namespace}"')
                return 403, self.status_json(403, "Forbidden", message, name, plural)
            obj = self.objects.get((plural, namespace, name))
            if obj is None:
                return 404, self.status_json(404, "NotFound", f'{plural}.apps "{name}" not found', name, plural)
            if method == "GET":
                return 200, self.scale_json(plural, namespace, name, obj)
            if self.conflicts_to_inject > 0:
                self.conflicts_to_inject -= 1
                obj.resource_version += 1  # someone else wrote meanwhile
                return 409, self.status_json(409, "Conflict", f'Operation cannot be fulfilled on {plural}.apps "{name}": '
                                             "the object has been modified; please apply your changes to the latest "
                                             "version and try again", name, plural)
            replicas, version = self._apply(method, content_type, parsed, obj)
            if version is not None and version != str(obj.resource_version):
                return 409, self.status_json(409, "Conflict", f'Operation cannot be fulfilled on {plural}.apps "{name}": '
                                             "the object has been modified; please apply your changes to the latest "
                                             "version and try again", name, plural)
            if not isinstance(replicas, int) or replicas < 0:
                return 422, self.status_json(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: '
                                             f"Invalid value: {replicas!r}: must be greater than or equal to 0", name, plural)
            obj.replicas = replicas
            obj.resource_version += 1
            return 200, self.scale_json(plural, namespace, name, obj)

    @staticmethod
    def _apply(method: str, content_type: str, parsed: Any, obj: ScalableObject) -> tuple[Any, str | None]:
        if "json-patch" in content_type:
            replicas: Any = obj.replicas
            for operation in parsed or []:
                if operation.get("path") == "/spec/replicas" and operation.get("op") in ("replace", "add"):
                    replicas = operation.get("value")
            return replicas, None
        spec = (parsed or {}).get("spec") or {}
        version = ((parsed or {}).get("metadata") or {}).get("resourceVersion")
        return spec.get("replicas", obj.replicas), version

    # ---- server --------------------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                code, answer = fake.handle(self.command, self.path, self.headers.get("Content-Type", ""), body)
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_PUT = _serve  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
