"""A small fake Elasticsearch speaking the real HTTP protocol on 127.0.0.1, for tests and benchmarks.

elasticsearch-py talks to it unchanged: the root info carries the `X-Elastic-Product: Elasticsearch`
header, and it serves `_index_template`, `_data_stream`, `_bulk` (per-item results; `create` of an
existing `_id` -> 409 `version_conflict_engine_exception`; a value that does not fit an explicit mapping
of the matching template -> 400 `document_parsing_exception`), `_count`, `_search` (match_all, term,
terms, match, ids, exists, range, bool) and `_refresh`. Faults are injected through `FakeElasticsearch.set_faults()` or
`POST /_fake/faults` (whole-request status such as 429/503 for the next N requests, a response delay to
cause client timeouts, per-item statuses for every k-th bulk item, data streams that may not be
auto-created as with `action.auto_create_index: false`: per-item 404 `index_not_found_exception`).

    python -m tests.fakes.elasticsearch --port P       # separate process, prints its URL when ready
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import operator
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: the version the fake claims; a 9.x server accepts compatible-with=8 (our client) and =9, as the real one does
VERSION = "9.1.0"
_COMPAT = re.compile(r"compatible-with=(\d+)")
_NUMERIC_TYPES = {"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float"}
_INTEGER_TYPES = {"long", "integer", "short", "byte"}
_FLOAT_TYPES = {"double", "float", "half_float", "scaled_float"}
_decode = json.JSONDecoder().decode
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$")


@dataclass
class Faults:
    """What the fake does wrong: see `FakeElasticsearch.set_faults`."""

    status: int | None = None
    remaining_requests: int | None = None  # None: until cleared
    delay_seconds: float = 0.0
    item_status: int | None = None
    item_every: int = 1
    remaining_items: int | None = None
    paths: tuple[str, ...] = ("/_bulk",)
    missing_streams: tuple[str, ...] = ()  # fnmatch patterns of streams that cannot be auto-created


class _Index:
    def __init__(self, name: str, data_stream: str | None, typed_fields: dict[str, Any]) -> None:
        self.name = name
        self.data_stream = data_stream
        self.typed_fields = typed_fields  # see _typed_fields
        self.docs: dict[str, bytes] = {}


class FakeElasticsearch:
    """The in-memory cluster state plus the HTTP server; `start()` binds 127.0.0.1 on `port` (0: free)."""

    def __init__(self, port: int = 0, version: str = VERSION) -> None:
        self.version = version
        self.major_version = int(version.split(".")[0])
        self._lock = threading.RLock()
        self.templates: dict[str, dict[str, Any]] = {}
        self.indices: dict[str, _Index] = {}
        self.faults = Faults()
        self.requests_seen: dict[str, int] = {}
        self.last_headers: dict[str, str] = {}
        self._item_counter = itertools.count()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeElasticsearch:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-es", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeElasticsearch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test API ------------------------------------------------------------------------------
    def set_faults(
        self,
        status: int | None = None,
        requests: int | None = None,
        delay_seconds: float = 0.0,
        item_status: int | None = None,
        item_every: int = 1,
        items: int | None = None,
        paths: tuple[str, ...] = ("/_bulk",),
        missing_streams: tuple[str, ...] = (),
    ) -> None:
        """`status` answers the next `requests` requests whose path contains one of `paths` (None: all
        until cleared); `delay_seconds` stalls every such request; `item_status` fails every
        `item_every`-th bulk item (`items` of them, None: until cleared); bulk items for a stream matching
        one of `missing_streams` (not yet existing) answer 404 as with `action.auto_create_index: false`."""
        if item_every < 1:
            raise ValueError(f"item_every must be >= 1, got {item_every}")
        with self._lock:
            self.faults = Faults(status, requests, delay_seconds, item_status, item_every, items, tuple(paths),
                                 tuple(missing_streams))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults = Faults()

    def documents(self, pattern: str = "*") -> dict[str, dict[str, Any]]:
        """id -> source of every stored document in indices/data streams matching `pattern`."""
        with self._lock:
            return {
                doc_id: json.loads(raw)
                for index in self._resolve(pattern)
                for doc_id, raw in index.docs.items()
            }

    def count(self, pattern: str = "*") -> int:
        with self._lock:
            return sum(len(index.docs) for index in self._resolve(pattern))

    def data_streams(self) -> list[str]:
        with self._lock:
            return sorted({index.data_stream for index in self.indices.values() if index.data_stream})

    def reset(self) -> None:
        with self._lock:
            self.templates.clear()
            self.indices.clear()
            self.faults = Faults()
            self.requests_seen.clear()

    # -- cluster logic ---------------------------------------------------------------------------
    def _resolve(self, pattern: str) -> list[_Index]:
        chosen: list[_Index] = []
        for part in pattern.split(","):
            part = part.strip() or "*"
            for index in self.indices.values():
                names = [index.name] + ([index.data_stream] if index.data_stream else [])
                if part in ("_all", "*") or any(fnmatch.fnmatchcase(name, part) for name in names):
                    if index not in chosen:
                        chosen.append(index)
        return chosen

    def _matching_template(self, name: str) -> tuple[str, dict[str, Any]] | None:
        best: tuple[int, str, dict[str, Any]] | None = None
        for template_name, body in self.templates.items():
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in body.get("index_patterns", [])):
                priority = int(body.get("priority", 0))
                if best is None or priority > best[0]:
                    best = (priority, template_name, body)
        return (best[1], best[2]) if best else None

    def _index_for_write(self, name: str, op_type: str) -> tuple[_Index | None, dict[str, Any] | None]:
        """The index a bulk item writes into, creating it (or its data stream) like Elasticsearch does."""
        for index in self.indices.values():
            if index.data_stream == name or index.name == name:
                if index.data_stream and op_type != "create":
                    return None, _error(400, "illegal_argument_exception",
                                        "only write ops with an op_type of create are allowed in data streams")
                return index, None
        matched = self._matching_template(name)
        if matched is not None and "data_stream" in matched[1]:
            if op_type != "create":
                return None, _error(400, "illegal_argument_exception",
                                    "only write ops with an op_type of create are allowed in data streams")
            return self._create_data_stream(name, matched), None
        typed = _typed_fields(matched[1]) if matched else {}
        index = _Index(name, None, typed)
        self.indices[name] = index
        return index, None

    def _create_data_stream(self, name: str, matched: tuple[str, dict[str, Any]]) -> _Index:
        backing = f".ds-{name}-{datetime.now(timezone.utc):%Y.%m.%d}-000001"
        index = _Index(backing, name, _typed_fields(matched[1]))
        self.indices[backing] = index
        return index

    def bulk(self, body: bytes, default_index: str | None) -> dict[str, Any]:
        started = time.monotonic()
        lines = [line for line in body.split(b"\n") if line.strip()]
        items: list[dict[str, Any]] = []
        errors = False
        position = 0
        with self._lock:
            faults = self.faults
            while position < len(lines):
                action_line = _decode(lines[position].decode())
                position += 1
                op_type, meta = next(iter(action_line.items()))
                if op_type == "delete":
                    items.append({"delete": self._delete(meta, default_index)})
                    continue
                source_line = lines[position]
                position += 1
                result = self._write_item(op_type, meta, source_line, default_index, faults)
                if result["status"] >= 300:
                    errors = True
                items.append({op_type: result})
        return {"took": int((time.monotonic() - started) * 1000), "errors": errors, "items": items}

    def _write_item(
        self, op_type: str, meta: dict[str, Any], source_line: bytes, default_index: str | None, faults: Faults
    ) -> dict[str, Any]:
        index_name = meta.get("_index") or default_index
        if not index_name:
            return _error(400, "action_request_validation_exception", "index is missing")
        doc_id = meta.get("_id") or uuid.uuid4().hex
        result: dict[str, Any] = {"_index": index_name, "_id": doc_id}
        if faults.item_status is not None and faults.remaining_items != 0:
            if next(self._item_counter) % faults.item_every == 0:
                if faults.remaining_items is not None:
                    faults.remaining_items -= 1
                result.update(_error(faults.item_status, _fault_type(faults.item_status), "injected item fault"))
                return result
        if op_type not in ("create", "index"):
            result.update(_error(400, "illegal_argument_exception", f"unknown bulk action [{op_type}]"))
            return result
        if any(fnmatch.fnmatchcase(index_name, pattern) for pattern in faults.missing_streams) and not any(
                index_name in (index.name, index.data_stream) for index in self.indices.values()):
            result.update(_error(404, "index_not_found_exception", f"no such index [{index_name}] and "
                                 "[action.auto_create_index] is [false]"))
            return result
        index, failure = self._index_for_write(index_name, op_type)
        if index is None:
            result.update(failure or {})
            return result
        result["_index"] = index.name
        try:
            source = _decode(source_line.decode())
        except ValueError as error:
            result.update(_error(400, "document_parsing_exception", f"failed to parse: {error}"))
            return result
        problem = _check_types(source, index.typed_fields)
        if problem is not None:
            result.update(_error(400, "document_parsing_exception", problem))
            return result
        if index.data_stream and "@timestamp" not in source:
            result.update(_error(400, "document_parsing_exception",
                                 "data stream timestamp field [@timestamp] is missing"))
            return result
        if op_type == "create" and doc_id in index.docs:
            result.update(_error(409, "version_conflict_engine_exception",
                                 f"[{doc_id}]: version conflict, document already exists (current version [1])"))
            return result
        index.docs[doc_id] = bytes(source_line)
        result.update({"_version": 1, "result": "created", "status": 201, "_seq_no": len(index.docs) - 1,
                       "_primary_term": 1, "_shards": {"total": 1, "successful": 1, "failed": 0}})
        return result

    def _delete(self, meta: dict[str, Any], default_index: str | None) -> dict[str, Any]:
        index_name = meta.get("_index") or default_index or ""
        doc_id = meta.get("_id", "")
        for index in self._resolve(index_name):
            if index.docs.pop(doc_id, None) is not None:
                return {"_index": index.name, "_id": doc_id, "result": "deleted", "status": 200}
        return {"_index": index_name, "_id": doc_id, "result": "not_found", "status": 404}

    def search(self, pattern: str, query: dict[str, Any] | None, size: int) -> dict[str, Any]:
        with self._lock:
            hits = []
            for index in self._resolve(pattern):
                for doc_id, raw in index.docs.items():
                    source = json.loads(raw)
                    if _matches(source, doc_id, query or {"match_all": {}}):
                        hits.append({"_index": index.name, "_id": doc_id, "_score": 1.0, "_source": source})
        return {
            "took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": 1.0 if hits else None,
                     "hits": hits[:size]},
        }

    def count_query(self, pattern: str, query: dict[str, Any] | None) -> int:
        return int(self.search(pattern, query, 0)["hits"]["total"]["value"])

    def put_data_stream(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            if any(index.data_stream == name for index in self.indices.values()):
                return _error(400, "resource_already_exists_exception", f"data_stream [{name}] already exists")
            matched = self._matching_template(name)
            if matched is None or "data_stream" not in matched[1]:
                return _error(400, "illegal_argument_exception",
                              f"no matching index template with data stream found for data stream [{name}]")
            self._create_data_stream(name, matched)
            return None

    def describe_data_streams(self, pattern: str) -> list[dict[str, Any]]:
        with self._lock:
            described = []
            for index in self.indices.values():
                if index.data_stream and fnmatch.fnmatchcase(index.data_stream, pattern or "*"):
                    matched = self._matching_template(index.data_stream)
                    described.append({
                        "name": index.data_stream, "timestamp_field": {"name": "@timestamp"},
                        "indices": [{"index_name": index.name, "index_uuid": uuid.uuid5(uuid.NAMESPACE_DNS, index.name).hex}],
                        "generation": 1, "status": "GREEN", "template": matched[0] if matched else "",
                        "hidden": False, "system": False,
                    })
            return described

    def note_request(self, path: str) -> Faults | None:
        """Count the request; return the faults to apply to it, consuming one from a limited budget."""
        with self._lock:
            self.requests_seen[path] = self.requests_seen.get(path, 0) + 1
            faults = self.faults
            applies = any(fragment in path for fragment in faults.paths)
            if not applies or (faults.status is None and faults.delay_seconds <= 0):
                return None
            if faults.remaining_requests is not None:
                if faults.remaining_requests <= 0:
                    return None
                faults.remaining_requests -= 1
            return Faults(faults.status, None, faults.delay_seconds)


def _error(status: int, error_type: str, reason: str) -> dict[str, Any]:
    return {"status": status, "error": {"type": error_type, "reason": reason}}


def _fault_type(status: int) -> str:
    return {429: "es_rejected_execution_exception", 409: "version_conflict_engine_exception",
            401: "security_exception", 403: "security_exception", 404: "index_not_found_exception",
            413: "content_too_long_exception"}.get(
        status, "mapper_parsing_exception" if status == 400 else "unavailable_shards_exception")


def _typed_fields(template: dict[str, Any]) -> dict[str, Any]:
    """Tree of the explicit numeric/date/boolean fields of a template: name -> type, or name -> subtree."""

    def walk(properties: dict[str, Any]) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for name, spec in properties.items():
            if "properties" in spec:
                subtree = walk(spec["properties"])
                if subtree:
                    tree[name] = subtree
            elif spec.get("type") in _NUMERIC_TYPES | {"date", "boolean"}:
                tree[name] = spec["type"]
        return tree

    return walk(template.get("template", {}).get("mappings", {}).get("properties", {}))


def _lookup(source: dict[str, Any], path: str) -> Any:
    if path in source:
        return source[path]
    node: Any = source
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _check_types(source: dict[str, Any], typed: dict[str, Any], prefix: str = "") -> str | None:
    """Walks the document's own keys (cheap) and checks those the mapping types explicitly."""
    for key, value in source.items():
        spec = typed.get(key)
        if spec is None or value is None:
            continue
        if isinstance(spec, dict):
            if isinstance(value, dict):
                problem = _check_types(value, spec, f"{prefix}{key}.")
                if problem is not None:
                    return problem
            continue
        for item in value if isinstance(value, list) else (value,):
            if not _fits(item, spec):
                return f"[1:1] failed to parse field [{prefix}{key}] of type [{spec}] in document"
    return None


def _fits(value: Any, field_type: str) -> bool:
    value_type = type(value)
    if value_type is float and field_type in _FLOAT_TYPES:
        return True
    if field_type in _NUMERIC_TYPES:
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)):
            return field_type not in _INTEGER_TYPES or float(value).is_integer()
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return False
            return field_type not in _INTEGER_TYPES or number.is_integer()
        return False
    if field_type == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    if field_type == "date":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if isinstance(value, str):
            return _ISO_DATE.match(value) is not None
    return False


def apply_filter_path(value: Any, filter_path: str) -> Any:
    """Elasticsearch's `filter_path` response filtering (comma-separated dotted paths, `*` wildcards)."""
    trie: dict[str, Any] = {}
    for path in filter_path.split(","):
        parts = [part for part in path.strip().split(".") if part]
        node = trie
        for number, part in enumerate(parts):
            if number == len(parts) - 1:
                node[part] = _LEAF
            else:
                child = node.get(part)
                if child is _LEAF:
                    break
                node = node.setdefault(part, {})
    filtered = _filter(value, trie)
    return {} if filtered is None else filtered


_LEAF: dict[str, Any] = {}


def _trie_child(trie: dict[str, Any], key: str) -> dict[str, Any] | None:
    if key in trie:
        return trie[key]  # type: ignore[no-any-return]
    for pattern, child in trie.items():
        # a bare "*" matches every key: skip fnmatch there (it dominated filtering a 2,000-item bulk response)
        if pattern == "*" or ("*" in pattern and fnmatch.fnmatchcase(key, pattern)):
            return child  # type: ignore[no-any-return]
    return None


def _filter(value: Any, trie: dict[str, Any]) -> Any:
    if isinstance(value, list):
        kept = [_filter(item, trie) for item in value]
        return [item for item in kept if item not in (None, {}, [])]
    if not isinstance(value, dict):
        return None
    result: dict[str, Any] = {}
    for key, child in value.items():
        node = _trie_child(trie, key)
        if node is None:
            continue
        if node is _LEAF:
            result[key] = child
        else:
            sub = _filter(child, node)
            if sub not in (None, {}, []):
                result[key] = sub
    return result


def _matches(source: dict[str, Any], doc_id: str, query: dict[str, Any]) -> bool:
    if not query:
        return True
    kind, spec = next(iter(query.items()))
    if kind == "match_all":
        return True
    if kind == "ids":
        return doc_id in spec.get("values", [])
    if kind in ("term", "match", "match_phrase"):
        field, wanted = next(iter(spec.items()))
        if isinstance(wanted, dict):
            wanted = wanted.get("value", wanted.get("query"))
        value = doc_id if field == "_id" else _lookup(source, field.removesuffix(".keyword"))
        values = value if isinstance(value, list) else [value]
        if kind == "term":
            return any(v == wanted or str(v) == str(wanted) for v in values)
        words = set(str(wanted).lower().split())
        return any(words & set(re.split(r"\W+", str(v).lower())) for v in values if v is not None)
    if kind == "terms":
        field, wanted_list = next(iter(spec.items()))
        value = doc_id if field == "_id" else _lookup(source, field.removesuffix(".keyword"))
        values = value if isinstance(value, list) else [value]
        return any(str(v) in {str(w) for w in wanted_list} for v in values)
    if kind == "exists":
        return _lookup(source, spec["field"]) is not None
    if kind == "range":
        field, bounds = next(iter(spec.items()))
        value = _lookup(source, field)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        compare = {"gte": operator.ge, "gt": operator.gt, "lte": operator.le, "lt": operator.lt}
        return all(compare[op](value, float(bound)) for op, bound in bounds.items() if op in compare)
    if kind == "bool":
        must = spec.get("must", []) + spec.get("filter", [])
        must = must if isinstance(must, list) else [must]
        should = spec.get("should", [])
        should = should if isinstance(should, list) else [should]
        must_not = spec.get("must_not", [])
        must_not = must_not if isinstance(must_not, list) else [must_not]
        return (all(_matches(source, doc_id, q) for q in must)
                and (not should or any(_matches(source, doc_id, q) for q in should))
                and not any(_matches(source, doc_id, q) for q in must_not))
    raise ValueError(f"fake elasticsearch does not support query type [{kind}]")


def _handler_for(cluster: FakeElasticsearch) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY, as Elasticsearch's own HTTP layer sets it: headers and body go out in two writes, and
        # with Nagle on, a small body (a bulk response cut down by filter_path) waited ~40 ms for the
        # client's delayed ACK of the headers on every request.
        disable_nagle_algorithm = True
        server_version = "fake-elasticsearch"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return None

        def _send(self, status: int, payload: Any, head: bool = False) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _json_body(self, raw: bytes) -> dict[str, Any]:
            return json.loads(raw) if raw.strip() else {}

        def do_HEAD(self) -> None:
            self._send(200, {}, head=True)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def _dispatch(self, method: str) -> None:
            raw = self._body()
            parts = urlsplit(self.path)
            path = parts.path
            params = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            try:
                if path.startswith("/_fake/"):
                    self._control(method, path, raw)
                    return
                cluster.last_headers = {key.lower(): value for key, value in self.headers.items()}
                for header in ("accept", "content-type"):
                    wanted = _COMPAT.search(cluster.last_headers.get(header, ""))
                    if wanted and not cluster.major_version - 1 <= int(wanted.group(1)) <= cluster.major_version:
                        self._send(400, {"error": {
                            "type": "media_type_header_exception",
                            "reason": f"Invalid media-type value on headers [{header}]: compatible-with="
                                      f"{wanted.group(1)} is not supported by version {cluster.version}"},
                            "status": 400})
                        return
                faults = cluster.note_request(path)
                if faults is not None:
                    if faults.delay_seconds > 0:
                        time.sleep(faults.delay_seconds)
                    if faults.status is not None:
                        self._send(faults.status, {
                            "error": {"type": _fault_type(faults.status), "reason": "injected fault"},
                            "status": faults.status})
                        return
                self._route(method, path, params, raw)
            except (BrokenPipeError, ConnectionResetError):
                return
            except Exception as error:  # noqa: BLE001 - answer like a server, never die
                self._send(400, {"error": {"type": "parse_exception", "reason": str(error)}, "status": 400})

        def _route(self, method: str, path: str, params: dict[str, str], raw: bytes) -> None:
            segments = [segment for segment in path.split("/") if segment]
            if not segments:
                self._send(200, {
                    "name": "fake-node", "cluster_name": "fake", "cluster_uuid": "fake-cluster",
                    "version": {"number": cluster.version, "build_flavor": "default", "lucene_version": "9.12.0",
                                "minimum_wire_compatibility_version": "7.17.0",
                                "minimum_index_compatibility_version": "7.0.0"},
                    "tagline": "You Know, for Search"})
                return
            if segments[0] == "_index_template":
                self._index_template(method, segments[1] if len(segments) > 1 else "", raw)
                return
            if segments[0] == "_data_stream":
                self._data_stream(method, segments[1] if len(segments) > 1 else "*")
                return
            if segments[-1] == "_bulk" and method in ("POST", "PUT"):
                default_index = segments[0] if len(segments) == 2 else None
                response = cluster.bulk(raw, default_index)
                if "filter_path" in params:
                    response = apply_filter_path(response, params["filter_path"])
                self._send(200, response)
                return
            if segments[-1] in ("_search", "_count"):
                pattern = segments[0] if len(segments) == 2 else "*"
                body = self._json_body(raw)
                if segments[-1] == "_count":
                    count = cluster.count_query(pattern, body.get("query"))
                    self._send(200, {"count": count, "_shards": {"total": 1, "successful": 1, "failed": 0}})
                else:
                    size = int(params.get("size", body.get("size", 10)))
                    self._send(200, cluster.search(pattern, body.get("query"), size))
                return
            if segments[-1] == "_refresh":
                self._send(200, {"_shards": {"total": 1, "successful": 1, "failed": 0}})
                return
            if segments[0] == "_cluster" and segments[-1] == "health":
                self._send(200, {"cluster_name": "fake", "status": "green", "number_of_nodes": 1})
                return
            self._send(404, {"error": {"type": "fake_not_implemented", "reason": f"{method} {path}"},
                             "status": 404})

        def _index_template(self, method: str, name: str, raw: bytes) -> None:
            with cluster._lock:
                if method == "PUT" or (method == "POST" and name):
                    cluster.templates[name] = self._json_body(raw)
                    self._send(200, {"acknowledged": True})
                elif method == "GET":
                    found = [{"name": n, "index_template": body} for n, body in cluster.templates.items()
                             if not name or fnmatch.fnmatchcase(n, name)]
                    if name and not found:
                        self._send(404, {"error": {"type": "resource_not_found_exception",
                                                   "reason": f"index template matching [{name}] not found"},
                                         "status": 404})
                    else:
                        self._send(200, {"index_templates": found})
                elif method == "DELETE":
                    existed = cluster.templates.pop(name, None) is not None
                    self._send(200 if existed else 404, {"acknowledged": existed})
                else:
                    self._send(405, {"error": "method not allowed", "status": 405})

        def _data_stream(self, method: str, name: str) -> None:
            if method == "PUT":
                failure = cluster.put_data_stream(name)
                if failure is None:
                    self._send(200, {"acknowledged": True})
                else:
                    self._send(failure["status"], failure)
            elif method == "GET":
                streams = cluster.describe_data_streams(name)
                if not streams and "*" not in name:
                    self._send(404, {"error": {"type": "index_not_found_exception",
                                               "reason": f"no such index [{name}]"}, "status": 404})
                else:
                    self._send(200, {"data_streams": streams})
            elif method == "DELETE":
                with cluster._lock:
                    doomed = [key for key, index in cluster.indices.items()
                              if index.data_stream and fnmatch.fnmatchcase(index.data_stream, name)]
                    for key in doomed:
                        del cluster.indices[key]
                self._send(200, {"acknowledged": True})
            else:
                self._send(405, {"error": "method not allowed", "status": 405})

        def _control(self, method: str, path: str, raw: bytes) -> None:
            if path == "/_fake/faults" and method in ("POST", "PUT"):
                spec = self._json_body(raw)
                if "paths" in spec:
                    spec["paths"] = tuple(spec["paths"])
                cluster.set_faults(**spec)
                self._send(200, {"acknowledged": True})
            elif path == "/_fake/faults" and method == "DELETE":
                cluster.clear_faults()
                self._send(200, {"acknowledged": True})
            elif path == "/_fake/reset":
                cluster.reset()
                self._send(200, {"acknowledged": True})
            elif path == "/_fake/stats":
                with cluster._lock:
                    self._send(200, {"documents": cluster.count(), "requests": dict(cluster.requests_seen),
                                     "data_streams": cluster.data_streams()})
            else:
                self._send(404, {"error": f"unknown control {method} {path}", "status": 404})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fake Elasticsearch on 127.0.0.1 for tests")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    parser.add_argument("--version", default=VERSION, help=f"version to claim (default {VERSION})")
    args = parser.parse_args(argv)
    cluster = FakeElasticsearch(args.port, args.version)
    print(f"fake elasticsearch listening on {cluster.url}", flush=True)
    try:
        cluster._server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
