"""OTLP/HTTP receiver for the engine's per-request logs and traces -> RequestRecords.

Speaks the OTLP/HTTP spec for POST /v1/logs and /v1/traces: binary protobuf
(application/x-protobuf) or OTLP JSON (application/json, lowerCamelCase keys, trace/span ids in hex),
optionally gzip-compressed. Success: 200 with an Export*ServiceResponse in the request's encoding; bad
payload (also: nesting too deep to decode): 400 with a google.rpc.Status; unsupported content type: 415;
body over the limit: 413, decided from Content-Length before reading, while reading (never more than the
limit is held) and while decompressing (zlib with a max_length: a small gzip bomb cannot inflate past the
limit); missing or wrong bearer token, when one is set: 401; the consumer failing (the durable spool could
not take them): 503 (retryable, the exporter sends again).

The builtin sidecar sends each request twice (a log record and a span with the same attributes), so the
receiver forwards only the first record per request id it sees (a bounded memory of recent ids).

This module decodes and maps; it serves nothing: `dsagent.otlp_listener.OtlpReceiverServer` runs the
router on its own port (sources.otlp_receiver.host/port).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from dsagent.samples import RequestRecord
from dsagent.sources.otlp_mapping import record_from_attributes

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_HEX_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_DEDUPE_IDS = 65_536


class BadPayload(ValueError):
    """The body could not be decoded as the OTLP message its content type promises."""


def any_value_to_python(value: AnyValue) -> Any:
    """OTLP AnyValue -> str/bool/int/float/bytes/list/dict (None when unset)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_to_dict(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_to_dict(attributes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in attributes:
        assert isinstance(item, KeyValue)
        result[item.key] = any_value_to_python(item.value)
    return result


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP JSON writes trace/span ids as hex; protobuf's JSON mapping expects base64 for bytes."""
    if isinstance(node, dict):
        converted = {}
        for key, value in node.items():
            if key in _HEX_ID_KEYS and isinstance(value, str) and value:
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError as error:
                    raise BadPayload(f"{key} {value!r} is not a hex id") from error
                converted[key] = value
            else:
                converted[key] = _hex_ids_to_base64(value)
        return converted
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    return node


def decode_body(body: bytes, content_type: str, message: Message) -> None:
    """Fill `message` from an OTLP/HTTP body of the given media type (protobuf or JSON)."""
    if content_type == PROTOBUF:
        try:
            message.ParseFromString(body)
        except DecodeError as error:
            raise BadPayload(f"body is not a valid {message.DESCRIPTOR.name} protobuf: {error}") from error
        return
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadPayload(f"body is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise BadPayload(f"OTLP JSON body must be an object, got {type(document).__name__}")
    try:
        json_format.ParseDict(_hex_ids_to_base64(document), message, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise BadPayload(f"body is not a valid OTLP JSON {message.DESCRIPTOR.name}: {error}") from error


class BodyTooLarge(ValueError):
    """The body (as sent, or once decompressed) is over the receiver's limit: 413."""


def _decompress(body: bytes, content_encoding: str, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """Inflate gzip/deflate without ever holding more than `max_bytes` of output (a gzip bomb stops at the
    limit, not at its full size)."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadPayload(f"unsupported Content-Encoding {content_encoding!r}; use gzip or none")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    remaining = body
    try:
        while remaining:  # gzip allows several members back to back
            inflater = zlib.decompressobj(wbits)
            chunk = inflater.decompress(remaining, max_bytes - size + 1)
            size += len(chunk)
            if size > max_bytes or inflater.unconsumed_tail:
                raise BodyTooLarge(f"decompressed body exceeds the {max_bytes}-byte limit")
            parts.append(chunk)
            if not inflater.eof:
                raise BadPayload(f"Content-Encoding {encoding} but the body is truncated")
            remaining = inflater.unused_data
    except zlib.error as error:
        raise BadPayload(f"Content-Encoding {encoding} but the body is not {encoding}: {error}") from error
    return b"".join(parts)


async def _read_capped(http_request: Request, max_bytes: int) -> bytes:
    """The body, refused (BodyTooLarge) as soon as it passes `max_bytes`: Content-Length is checked before
    reading and the stream is counted while reading, so an oversized body is never held whole."""
    declared = http_request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise BadPayload(f"Content-Length {declared!r} is not a number") from None
        if declared_bytes > max_bytes:
            raise BodyTooLarge(f"body of {declared_bytes} bytes exceeds the {max_bytes}-byte limit")
    parts: list[bytes] = []
    size = 0
    async for chunk in http_request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"body exceeds the {max_bytes}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


def records_from_logs(request: logs_service_pb2.ExportLogsServiceRequest) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    for resource_logs in request.resource_logs:
        resource = attributes_to_dict(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for log_record in scope_logs.log_records:
                attributes = attributes_to_dict(log_record.attributes)
                body = any_value_to_python(log_record.body)
                if isinstance(body, dict):  # structured body: its fields, attributes taking precedence
                    attributes = {**body, **attributes}
                time_nano = log_record.time_unix_nano or log_record.observed_time_unix_nano
                timestamp = time_nano / 1e9 if time_nano else time.time()
                record = record_from_attributes(attributes, timestamp)
                if record is not None:
                    _add_resource(record, resource)
                    records.append(record)
    return records


def records_from_traces(request: trace_service_pb2.ExportTraceServiceRequest) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    for resource_spans in request.resource_spans:
        resource = attributes_to_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                duration = None
                if span.end_time_unix_nano and span.end_time_unix_nano >= span.start_time_unix_nano:
                    duration = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
                end_nano = span.end_time_unix_nano or span.start_time_unix_nano
                timestamp = end_nano / 1e9 if end_nano else time.time()
                record = record_from_attributes(attributes_to_dict(span.attributes), timestamp, duration)
                if record is not None:
                    record.attributes.setdefault("trace_id", span.trace_id.hex())
                    record.attributes.setdefault("span_id", span.span_id.hex())
                    _add_resource(record, resource)
                    records.append(record)
    return records


def _add_resource(record: RequestRecord, resource: dict[str, Any]) -> None:
    for key in ("service.name", "service.instance.id", "host.name"):
        if key in resource:
            record.attributes.setdefault(key, resource[key])


class RequestDeduper:
    """Remembers the last `capacity` request ids; `fresh()` keeps records whose id was not seen yet."""

    def __init__(self, capacity: int = DEFAULT_DEDUPE_IDS) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.duplicates_dropped = 0

    def fresh(self, records: list[RequestRecord]) -> list[RequestRecord]:
        kept: list[RequestRecord] = []
        with self._lock:
            for record in records:
                if record.request_id in self._seen:
                    self._seen.move_to_end(record.request_id)
                    self.duplicates_dropped += 1
                    continue
                self._seen[record.request_id] = None
                if len(self._seen) > self._capacity:
                    self._seen.popitem(last=False)
                kept.append(record)
        return kept

    def forget(self, records: list[RequestRecord]) -> None:
        """Un-see these ids (their delivery failed; the exporter's retry must get through)."""
        with self._lock:
            for record in records:
                self._seen.pop(record.request_id, None)


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def _encode(message: Message, content_type: str) -> bytes:
    if content_type == JSON:
        return json_format.MessageToJson(message, indent=None).encode("utf-8")
    return message.SerializeToString()


_GRPC_CODES = {400: 3, 401: 16, 413: 8}  # INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED; else UNAVAILABLE


def _status_response(http_status: int, text: str, content_type: str) -> Response:
    status = status_pb2.Status(code=_GRPC_CODES.get(http_status, 14), message=text)
    media = content_type if content_type in (PROTOBUF, JSON) else JSON
    headers = {"WWW-Authenticate": "Bearer"} if http_status == 401 else None
    return Response(_encode(status, media), status_code=http_status, media_type=media, headers=headers)


def _authorized(http_request: Request, bearer_token: str | None) -> bool:
    if bearer_token is None:
        return True
    expected = f"Bearer {bearer_token}".encode()
    return hmac.compare_digest(http_request.headers.get("authorization", "").encode(), expected)


# The OpenAPI description of the raw body the handlers read themselves (OTLP/HTTP's two encodings), so
# schema-driven clients and schemathesis send real bodies; every answer but 200 is a google.rpc.Status.
_OPENAPI_EXTRA: dict[str, Any] = {"requestBody": {"required": True, "content": {
    JSON: {"schema": {"type": "object", "description": "OTLP JSON Export*ServiceRequest"}},
    PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
}}}
_STATUS_BODY = {"content": {JSON: {"schema": {"type": "object"}}, PROTOBUF: {"schema": {"type": "string"}}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "accepted (Export*ServiceResponse)", **_STATUS_BODY},
    400: {"description": "not a valid OTLP request", **_STATUS_BODY},
    401: {"description": "missing or wrong bearer token", **_STATUS_BODY},
    413: {"description": "body over the limit (as sent or decompressed)", **_STATUS_BODY},
    415: {"description": "unsupported Content-Type", **_STATUS_BODY},
    503: {"description": "the records could not be stored durably; send again", **_STATUS_BODY},
}


def build_otlp_router(
    on_records: Callable[[list[RequestRecord]], None],
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    deduper: RequestDeduper | None = None,
    bearer_token: str | None = None,
) -> APIRouter:
    """POST /v1/logs and /v1/traces; each request record goes to `on_records` once (deduplicated by id).
    With `bearer_token`, a request without `Authorization: Bearer <token>` is answered 401 unread."""
    router = APIRouter()
    seen = deduper if deduper is not None else RequestDeduper()

    async def receive(
        http_request: Request,
        message: Message,
        response: Message,
        extract: Callable[[Any], list[RequestRecord]],
    ) -> Response:
        content_type = _media_type(http_request.headers.get("content-type", ""))
        if not _authorized(http_request, bearer_token):
            return _status_response(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                    content_type)
        if content_type not in (PROTOBUF, JSON):
            return _status_response(
                415, f"unsupported Content-Type {content_type!r}; send {PROTOBUF} or {JSON}", JSON
            )
        try:
            body = await _read_capped(http_request, max_body_bytes)
            body = _decompress(body, http_request.headers.get("content-encoding", ""), max_body_bytes)
            decode_body(body, content_type, message)
            records = extract(message)
        except BodyTooLarge as error:
            return _status_response(413, str(error), content_type)
        except BadPayload as error:
            return _status_response(400, str(error), content_type)
        except RecursionError:
            return _status_response(400, "body nests too deeply to decode", content_type)
        except (ValueError, TypeError, OverflowError) as error:  # a well-formed message with unusable values
            return _status_response(400, f"request records could not be read: {error}", content_type)
        records = seen.fresh(records)
        if records:
            try:
                on_records(records)
            except Exception:
                log.exception("the OTLP receiver's consumer failed on %d request records", len(records))
                seen.forget(records)
                return _status_response(503, "the agent could not store the records; retry", content_type)
        return Response(_encode(response, content_type), status_code=200, media_type=content_type)

    @router.post("/v1/logs", openapi_extra=_OPENAPI_EXTRA, responses=_RESPONSES)
    async def export_logs(request: Request) -> Response:
        return await receive(
            request,
            logs_service_pb2.ExportLogsServiceRequest(),
            logs_service_pb2.ExportLogsServiceResponse(),
            records_from_logs,
        )

    @router.post("/v1/traces", openapi_extra=_OPENAPI_EXTRA, responses=_RESPONSES)
    async def export_traces(request: Request) -> Response:
        return await receive(
            request,
            trace_service_pb2.ExportTraceServiceRequest(),
            trace_service_pb2.ExportTraceServiceResponse(),
            records_from_traces,
        )

    return router
