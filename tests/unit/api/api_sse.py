"""Parse a Server-Sent Events body the strict way OpenAI clients expect it."""

from __future__ import annotations

import json
from typing import Any


def parse_sse(body: str) -> tuple[list[dict[str, Any]], bool]:
    """(JSON chunks, whether the stream ended with data: [DONE]); fails on anything but data events."""
    assert body.endswith("\n\n"), f"stream does not end with a blank line: {body[-40:]!r}"
    events = body[:-2].split("\n\n")
    chunks: list[dict[str, Any]] = []
    done = False
    for event in events:
        assert event.startswith("data: "), f"not a data event: {event!r}"
        assert "\n" not in event, f"multi-line event: {event!r}"
        payload = event[len("data: ") :]
        assert not done, "data after [DONE]"
        if payload == "[DONE]":
            done = True
            continue
        chunks.append(json.loads(payload))
    return chunks, done
