"""Workloads: which requests the load generator sends (prompt, max_tokens), built-in or from a file.

Why: a tuning result only means something for a stated workload. Built-in profiles cover the shapes the
operator guides name (chat, summarisation, code with a shared prefix); a YAML file describes a custom one
(length ranges or an explicit request list); replay takes the request records the agent stored (its
NDJSON export, or an Elasticsearch query) so a node is tuned for the traffic it really serves.

Prompts are built from a fixed list of common English words (about one token each for BPE tokenizers);
the server's usage counts are what the figures use, never this estimate. Everything is seeded, so the same
workload name + seed gives the same requests on every machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Endpoint = Literal["completions", "chat"]

_WORDS = (
    "the of and to in is it that for on was with as be at by this have from or one had not but what all were "
    "when we there can an your which their said if do will each about how up out them then she many some so "
    "these would other into has more her two like him see time could no make than first been its who now "
    "people my made over did down only way find use may water long little very after words called just where "
    "most know get through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place well such here "
    "take why things help put years different away again off went old number great tell men say small every "
    "found still between name should home big give air line set own under read last never us left end along "
    "while might next sound below saw something thought both few those always looked show large often together "
    "asked house world going want school important until form food keep children feet land side without boy "
    "once animals life enough took sometimes four head above kind began almost live page got earth need far "
    "hand high year mother light parts country father let night following picture being study second eyes"
).split()


class WorkloadError(ValueError):
    """A workload name or file that cannot be used; the message names the file (and line) and the problem."""


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: the prompt text, how many tokens to ask for, and its length estimate."""

    prompt: str
    max_tokens: int
    prompt_words: int


class LengthRange(BaseModel):
    """Uniform integer range [min, max] (tokens)."""

    model_config = ConfigDict(extra="forbid")
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LengthRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class ExplicitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)


class WorkloadProfile(BaseModel):
    """A workload: length distributions with optional prefix sharing, or an explicit request list."""

    model_config = ConfigDict(extra="forbid")
    name: str = "custom"
    description: str = ""
    endpoint: Endpoint = "completions"
    prompt_tokens: LengthRange | None = None
    output_tokens: LengthRange | None = None
    shared_prefix_tokens: int = Field(default=0, ge=0)
    shared_prefix_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    requests: list[ExplicitRequest] | None = None
    source: str = ""

    @model_validator(mode="after")
    def _one_shape(self) -> WorkloadProfile:
        if self.requests is None and (self.prompt_tokens is None or self.output_tokens is None):
            raise ValueError("a workload needs prompt_tokens and output_tokens ranges, or a requests list")
        if self.requests is not None and not self.requests:
            raise ValueError("requests: the list is empty")
        return self

    def generate(self, count: int, seed: int = 0) -> list[RequestSpec]:
        """`count` requests, deterministic for (profile, seed); an explicit list is cycled."""
        if self.requests is not None:
            return [RequestSpec(item.prompt, item.max_tokens, len(item.prompt.split()))
                    for item in (self.requests[i % len(self.requests)] for i in range(count))]
        assert self.prompt_tokens is not None and self.output_tokens is not None
        rng = random.Random(f"{self.name}:{seed}")
        prefix = " ".join(rng.choice(_WORDS) for _ in range(self.shared_prefix_tokens))
        specs = []
        for _ in range(count):
            prompt_length = rng.randint(self.prompt_tokens.min, self.prompt_tokens.max)
            output_length = rng.randint(self.output_tokens.min, self.output_tokens.max)
            shared = bool(prefix) and rng.random() < self.shared_prefix_fraction
            own_length = max(1, prompt_length - (self.shared_prefix_tokens if shared else 0))
            words = " ".join(rng.choice(_WORDS) for _ in range(own_length))
            prompt = f"{prefix} {words}" if shared else words
            specs.append(RequestSpec(prompt, output_length, len(prompt.split())))
        return specs

    def describe(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"requests"}) | (
            {"requests": len(self.requests)} if self.requests is not None else {})


BUILTIN_PROFILES: dict[str, WorkloadProfile] = {
    "chat": WorkloadProfile(
        name="chat", description="short conversational turns",
        prompt_tokens=LengthRange(min=32, max=192), output_tokens=LengthRange(min=16, max=96)),
    "summarisation": WorkloadProfile(
        name="summarisation", description="long documents in, short summaries out",
        prompt_tokens=LengthRange(min=384, max=768), output_tokens=LengthRange(min=24, max=64)),
    "code": WorkloadProfile(
        name="code", description="completions behind a shared repository/system prefix",
        prompt_tokens=LengthRange(min=160, max=384), output_tokens=LengthRange(min=32, max=128),
        shared_prefix_tokens=128, shared_prefix_fraction=0.8),
    "tiny": WorkloadProfile(
        name="tiny", description="very short requests for smoke tests and CI",
        prompt_tokens=LengthRange(min=8, max=24), output_tokens=LengthRange(min=8, max=16)),
}
BUILTIN_PROFILES["summarization"] = BUILTIN_PROFILES["summarisation"]


def _yaml_line(text: str, key_path: Sequence[Any]) -> int | None:
    """Best-effort line (1-based) of a key path in a YAML mapping, for error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in key_path:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(key):
                    line, node = key_node.start_mark.line + 1, value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _load_yaml_profile(path: Path, text: str) -> WorkloadProfile:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise WorkloadError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict):
        raise WorkloadError(f"{path}:1: a workload file is a YAML mapping (prompt_tokens, output_tokens, ...)")
    raw.setdefault("name", path.stem)
    try:
        profile = WorkloadProfile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = [part for part in first["loc"]]
        line = _yaml_line(text, location) or 1
        key = ".".join(str(part) for part in location) or "(top level)"
        raise WorkloadError(f"{path}:{line}: {key}: {first['msg']}") from None
    return profile.model_copy(update={"source": str(path)})


def records_to_profile(records: Sequence[dict[str, Any]], name: str, source: str) -> WorkloadProfile:
    """Request records (prompt_length, tokens_generated) -> an explicit workload with those lengths."""
    rng = random.Random(name)
    requests = []
    for record in records:
        prompt_length = int(record["prompt_length"])
        words = " ".join(rng.choice(_WORDS) for _ in range(max(1, prompt_length)))
        requests.append(ExplicitRequest(prompt=words, max_tokens=max(1, int(record["tokens_generated"]))))
    return WorkloadProfile(name=name, description=f"replay of {len(requests)} stored request records",
                           requests=requests, source=source)


def _load_ndjson_records(path: Path, text: str) -> WorkloadProfile:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{path}:{number}: not a JSON object: {exc.msg}") from None
        if not isinstance(record, dict):
            raise WorkloadError(f"{path}:{number}: expected a JSON object per line")
        if "prompt_length" not in record and "tokens_generated" not in record:
            continue  # other documents in a mixed export
        for key in ("prompt_length", "tokens_generated"):
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise WorkloadError(f"{path}:{number}: {key} must be a non-negative integer, got {value!r}")
        records.append(record)
    if not records:
        raise WorkloadError(f"{path}: no request records (lines with prompt_length and tokens_generated)")
    return records_to_profile(records, path.stem, str(path))


def load_elasticsearch_records(url: str, index: str = "logs-dsagent.requests*", size: int = 1000,
                               api_key: str | None = None) -> WorkloadProfile:
    """The newest `size` request records from Elasticsearch, as a replay workload."""
    from elasticsearch import Elasticsearch
    from elasticsearch import exceptions as es_exceptions

    client = Elasticsearch(url, api_key=api_key, request_timeout=30)
    try:
        answer = client.search(index=index, size=size, sort=[{"@timestamp": {"order": "desc"}}],
                               query={"bool": {"filter": [{"exists": {"field": "prompt_length"}}]}},
                               source_includes=["prompt_length", "tokens_generated", "@timestamp"])
    except (es_exceptions.ApiError, es_exceptions.TransportError) as exc:
        raise WorkloadError(f"elasticsearch {url} index {index}: {exc}") from None
    finally:
        client.close()
    records = [hit["_source"] for hit in answer["hits"]["hits"]
               if isinstance(hit.get("_source", {}).get("prompt_length"), int)
               and isinstance(hit["_source"].get("tokens_generated"), int)]
    if not records:
        raise WorkloadError(f"elasticsearch {url} index {index}: no request records with prompt_length and "
                            "tokens_generated")
    records.reverse()  # oldest first, the order they arrived in
    return records_to_profile(records, "elasticsearch-replay", f"{url}/{index}")


def load_workload(name_or_path: str) -> WorkloadProfile:
    """A built-in profile name, a YAML workload file, an NDJSON file of request records, or
    `elasticsearch:URL[#INDEX]` for the request records stored there."""
    if name_or_path in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[name_or_path]
    if name_or_path.startswith("elasticsearch:"):
        target = name_or_path.removeprefix("elasticsearch:")
        url, _, index = target.partition("#")
        return load_elasticsearch_records(url, index or "logs-dsagent.requests*")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise WorkloadError(f"workload {name_or_path!r}: not a built-in profile "
                            f"({', '.join(sorted(set(BUILTIN_PROFILES) - {'summarization'}))}) and no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"{path}: cannot be read: {exc}") from None
    if path.suffix in (".ndjson", ".jsonl") or (text.lstrip().startswith("{") and "\n{" in text):
        return _load_ndjson_records(path, text)
    return _load_yaml_profile(path, text)
