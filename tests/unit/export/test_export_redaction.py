"""Redaction drops prompt/completion text by default and masks configured patterns everywhere."""

from __future__ import annotations

from typing import Any

import pytest
from dsagent.export.config import RedactionConfig
from dsagent.redaction import Redactor
from hypothesis import given
from hypothesis import strategies as st

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"


def default_redactor() -> Redactor:
    return Redactor.from_config(RedactionConfig())


def test_default_drops_prompt_and_completion_text_at_any_depth() -> None:
    record = {
        "request_id": "r1",
        "prompt": "tell me a secret",
        "attributes": {"completion": "the secret", "gen_ai.prompt": "x", "user": "u1"},
        "messages": [{"role": "user", "content": "hi"}],
    }
    redacted = default_redactor().redact(record)
    assert redacted == {"request_id": "r1", "attributes": {"user": "u1"}}
    assert "prompt" in record  # the input is not modified


def test_dotted_path_drops_only_that_field() -> None:
    redactor = Redactor(["attributes.user"])
    assert redactor.redact({"user": "a", "attributes": {"user": "b", "k": 1}}) == {"user": "a", "attributes": {"k": 1}}


def test_mask_patterns_apply_to_nested_strings_and_lists() -> None:
    config = RedactionConfig.model_validate({"mask_patterns": [{"pattern": EMAIL, "replacement": "<email>"}]})
    redacted = Redactor.from_config(config).redact(
        {"attributes": {"user": "mail ann@example.com now"}, "tags": ["bob@x.org", 3]}
    )
    assert redacted == {"attributes": {"user": "mail <email> now"}, "tags": ["<email>", 3]}


def test_invalid_regex_names_the_pattern() -> None:
    with pytest.raises(ValueError, match=r"'\(unclosed'"):
        Redactor([], [("(unclosed", "x")])


json_values = st.recursive(
    st.none() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


@given(st.dictionaries(st.sampled_from(["prompt", "completion", "a", "b", "messages"]) | st.text(max_size=8),
                       json_values, max_size=6))
def test_redacted_output_never_contains_a_dropped_key(record: dict[str, Any]) -> None:
    redactor = default_redactor()
    assert not _keys(redactor.redact(record)) & set(RedactionConfig().drop_fields)


@given(st.text(alphabet=st.characters(blacklist_characters="@"), max_size=30), st.from_regex(EMAIL, fullmatch=True))
def test_masked_output_never_contains_the_email(prefix: str, email: str) -> None:
    redacted = Redactor([], [(EMAIL, "<redacted>")]).redact({"text": prefix + " " + email})
    assert email not in redacted["text"]
