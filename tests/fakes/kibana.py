"""A protocol-faithful fake of Kibana's saved-objects import/export API, on loopback.

It answers what `dsagent dashboards install|export` and `dsagent doctor` call, the way Kibana 8.x/9.x does:

    POST [/s/<space>]/api/saved_objects/_import?overwrite=true|false   multipart/form-data, field `file`
    POST [/s/<space>]/api/saved_objects/_export                        JSON body -> NDJSON + export details
    GET  /api/status

and refuses what Kibana refuses: a state-changing call without `kbn-xsrf` (400), missing or wrong
credentials when `api_key`/`basic` are set (401), an unknown space (404), an import body that is not
multipart with a `file` part (415/400). Import checks each object's references against the file and
the space's stored objects (`missing_references`) and reports `conflict` for existing ids when overwrite is
false, with `successResults` / `errors` shaped like Kibana's. Every request is recorded for assertions.

    python -m tests.fakes.kibana --port P [--api-key KEY]      # separate process, prints its URL when ready
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERSION = "8.15.0"
ICONS = {"dashboard": "dashboardApp", "index-pattern": "indexPatternApp", "search": "discoverApp"}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    multipart_files: dict[str, tuple[str, str, bytes]] = field(default_factory=dict)  # name -> (filename, type, data)


class FakeKibana:
    def __init__(self, api_key: str | None = None, basic: tuple[str, str] | None = None,
                 spaces: tuple[str, ...] = ("default",), port: int = 0) -> None:
        self.api_key = api_key
        self.basic = basic
        self.spaces = set(spaces)
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {space: {} for space in spaces}
        self.requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeKibana:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeKibana:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- auth ------------------------------------------------------------------------------------------

    def authorised(self, headers: dict[str, str]) -> bool:
        if self.api_key is None and self.basic is None:
            return True
        given = headers.get("authorization", "")
        if self.api_key is not None and given == f"ApiKey {self.api_key}":
            return True
        if self.basic is not None:
            expected = base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            return given == f"Basic {expected}"
        return False

    # ---- saved objects ------------------------------------------------------------------------------------

    def import_objects(self, space: str, data: bytes, overwrite: bool) -> tuple[int, dict[str, Any]]:
        try:
            objects = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        except ValueError as exc:
            return 400, {"statusCode": 400, "error": "Bad Request", "message": f"Unexpected token: {exc}"}
        stored = self.objects[space]
        in_file = {(obj.get("type"), obj.get("id")) for obj in objects}
        success: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for obj in objects:
            key = (obj.get("type"), obj.get("id"))
            title = (obj.get("attributes") or {}).get("title", "")
            meta = {"title": title, "icon": ICONS.get(str(obj.get("type")), "questionInCircle")}
            missing = [{"type": ref["type"], "id": ref["id"]} for ref in obj.get("references", [])
                       if (ref["type"], ref["id"]) not in in_file and (ref["type"], ref["id"]) not in stored]
            if missing:
                errors.append({"id": key[1], "type": key[0], "title": title, "meta": meta,
                               "error": {"type": "missing_references", "references": missing}})
                continue
            if key in stored and not overwrite:
                errors.append({"id": key[1], "type": key[0], "title": title, "meta": meta,
                               "error": {"type": "conflict"}})
                continue
            result = {"type": key[0], "id": key[1], "meta": meta}
            if key in stored:
                result["overwrite"] = True
            stored[key] = obj  # type: ignore[index]
            success.append(result)
        return 200, {"success": not errors, "successCount": len(success), "successResults": success,
                     "errors": errors, "warnings": []}

    def export_objects(self, space: str, body: dict[str, Any]) -> tuple[int, str]:
        stored = self.objects[space]
        wanted = [(o["type"], o["id"]) for o in body.get("objects", [])]
        missing = [key for key in wanted if key not in stored]
        if missing:
            return 400, json.dumps({"statusCode": 400, "error": "Bad Request",
                                    "message": "Error fetching objects to export",
                                    "attributes": {"objects": [{"type": t, "id": i} for t, i in missing]}})
        out: list[tuple[str, str]] = []
        queue = list(wanted)
        while queue:
            key = queue.pop(0)
            if key in out or key not in stored:
                continue
            out.append(key)
            if body.get("includeReferencesDeep"):
                queue += [(ref["type"], ref["id"]) for ref in stored[key].get("references", [])]
        lines = []
        for key in out:  # Kibana adds per-save bookkeeping to every exported object
            lines.append(json.dumps({**stored[key], "updated_at": "2026-01-01T00:00:00.000Z",
                                     "version": "WzEsMV0=", "namespaces": [space]}))
        if not body.get("excludeExportDetails"):
            lines.append(json.dumps({"excludedObjects": [], "excludedObjectsCount": 0, "exportedCount": len(out),
                                     "missingRefCount": 0, "missingReferences": []}))
        return 200, "\n".join(lines) + "\n"


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str, str, bytes]]:
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise ValueError("body is not multipart")
    files = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True) or b""
            files[str(name)] = (str(part.get_filename() or ""), part.get_content_type(), payload)
    return files


def _handler_for(kibana: FakeKibana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, error: str, message: str) -> None:
            self._send(status, {"statusCode": status, "error": error, "message": message})

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            record = RecordedRequest(method, parts.path, parse_qs(parts.query), headers, body)
            kibana.requests.append(record)
            if not kibana.authorised(headers):
                self._error(401, "Unauthorized", "[security_exception]: missing authentication credentials")
                return
            path, space = parts.path, "default"
            if path.startswith("/s/"):
                _, _, space, rest = path.split("/", 3)
                path = "/" + rest
                if space not in kibana.spaces:
                    self._error(404, "Not Found", f"Saved object [space/{space}] not found")
                    return
            if method == "GET" and path == "/api/status":
                self._send(200, {"name": "fake-kibana", "version": {"number": VERSION},
                                 "status": {"overall": {"level": "available"}}})
                return
            if method == "POST" and "kbn-xsrf" not in headers:
                self._error(400, "Bad Request", "Request must contain a kbn-xsrf header.")
                return
            if method == "POST" and path == "/api/saved_objects/_import":
                content_type = headers.get("content-type", "")
                if not content_type.startswith("multipart/form-data"):
                    self._error(415, "Unsupported Media Type", "Unsupported Media Type")
                    return
                try:
                    record.multipart_files = _parse_multipart(content_type, body)
                except ValueError as exc:
                    self._error(400, "Bad Request", str(exc))
                    return
                if "file" not in record.multipart_files:
                    self._error(400, "Bad Request", "[request body.file]: expected value of type [Stream]")
                    return
                filename = record.multipart_files["file"][0]
                if not filename.endswith(".ndjson"):
                    self._error(400, "Bad Request", f"Invalid file extension {filename}")
                    return
                overwrite = record.query.get("overwrite", ["false"])[0] == "true"
                status, payload = kibana.import_objects(space, record.multipart_files["file"][2], overwrite)
                self._send(status, payload)
                return
            if method == "POST" and path == "/api/saved_objects/_export":
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    self._error(400, "Bad Request", "invalid JSON body")
                    return
                status, text = kibana.export_objects(space, request)
                self._send(status, text, "application/ndjson" if status == 200 else "application/json")
                return
            self._error(404, "Not Found", "Not Found")

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fake Kibana saved-objects API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--space", action="append", default=[])
    args = parser.parse_args(argv)
    kibana = FakeKibana(api_key=args.api_key, spaces=("default", *args.space), port=args.port).start()
    print(kibana.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        kibana.stop()


if __name__ == "__main__":
    main()
