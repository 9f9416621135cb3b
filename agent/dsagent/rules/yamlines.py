"""YAML with line numbers: mappings remember where each key was written.

Why: every refusal of a rule or test file names `file:line`, so an operator can jump to the bad key; plain
yaml.safe_load forgets positions. Duplicate keys are refused here too (YAML allows them silently).
"""

from __future__ import annotations

from typing import Any

import yaml


class LineDict(dict):  # type: ignore[type-arg]
    """A mapping that knows its own line and each key's line (1-based)."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):  # type: ignore[type-arg]
    """A sequence that knows its own line and each item's line."""

    line: int = 0
    item_lines: list[int]


class YamlError(ValueError):
    """Bad YAML; the message starts with the line."""


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag.endswith(":bool"):
            key = key_node.value  # YAML 1.1 reads `on:` as True; keys are names here (actions' `on: resolved`)
        else:
            key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise YamlError(f"{key_node.start_mark.line + 1}: mapping keys must be plain values")
        key = str(key) if not isinstance(key, str) else key
        if key in result:
            raise YamlError(f"{key_node.start_mark.line + 1}: duplicate key {key!r} "
                            f"(first at line {result.key_lines[key]})")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)  # type: ignore[arg-type]
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)  # type: ignore[arg-type]


def load(text: str) -> Any:
    """Parse one YAML document; YamlError("LINE: problem") on bad YAML or duplicate keys."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except YamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise YamlError(f"{line}: YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"0: YAML: {exc}") from None


def line_of(value: Any, default: int = 0) -> int:
    return int(getattr(value, "line", default) or default)
