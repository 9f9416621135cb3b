"""Tokenizer for a local HF-format checkpoint, over the `tokenizers` library (no transformers).

Reads tokenizer.json plus tokenizer_config.json (bos/eos tokens, add_bos_token, chat_template; the
template may also sit in chat_template.jinja) and generation_config.json (extra eos ids). The chat
template is rendered with jinja2 the way transformers' apply_chat_template does (sandboxed,
trim_blocks, lstrip_blocks, `raise_exception`, `tojson`). `IncrementalDetokenizer` turns a growing list
of token ids into text deltas that never split a multi-byte character.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as RustTokenizer

REPLACEMENT_CHAR = "\ufffd"


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _raise_exception(message: str) -> None:
    raise ValueError(f"chat template error: {message}")


class HFTokenizer:
    """protocol.Tokenizer over tokenizers.Tokenizer, with HF's special-token conventions."""

    def __init__(
        self,
        tokenizer: RustTokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        add_bos_token: bool | None = None,
        chat_template: str | None = None,
        extra_eos_token_ids: Sequence[int] = (),
    ) -> None:
        self._tok = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.chat_template = chat_template
        self.bos_token_id = tokenizer.token_to_id(bos_token) if bos_token else None
        self.eos_token_id = tokenizer.token_to_id(eos_token) if eos_token else None
        eos_ids: list[int] = []
        for token_id in [self.eos_token_id, *extra_eos_token_ids]:
            if token_id is not None and token_id not in eos_ids:
                eos_ids.append(int(token_id))
        self.eos_token_ids: Sequence[int] = eos_ids
        # add_bos_token=True in tokenizer_config means "prepend bos"; the post-processor may do it already
        self._prepend_bos = bool(add_bos_token) and self.bos_token_id is not None and not self._post_processor_adds_bos()

    @classmethod
    def from_dir(cls, model_dir: str | Path, config_eos_token_ids: Sequence[int] = ()) -> HFTokenizer:
        model_dir = Path(model_dir)
        tokenizer_path = model_dir / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise FileNotFoundError(
                f"{tokenizer_path} is missing; the checkpoint needs a fast tokenizer (tokenizer.json)"
            )
        try:
            rust = RustTokenizer.from_file(str(tokenizer_path))
        except Exception as exc:
            raise ValueError(f"{tokenizer_path} could not be read by `tokenizers`: {exc}") from exc
        config: dict[str, Any] = {}
        config_path = model_dir / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
        chat_template = config.get("chat_template")
        if isinstance(chat_template, list):  # named templates: take "default"
            by_name = {t.get("name"): t.get("template") for t in chat_template if isinstance(t, dict)}
            chat_template = by_name.get("default") or next(iter(by_name.values()), None)
        template_file = model_dir / "chat_template.jinja"
        if chat_template is None and template_file.is_file():
            chat_template = template_file.read_text(encoding="utf-8")
        extra_eos: list[int] = list(config_eos_token_ids)
        generation_path = model_dir / "generation_config.json"
        if generation_path.is_file():
            try:
                generation = json.loads(generation_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{generation_path} is not valid JSON: {exc}") from None
            eos = generation.get("eos_token_id")
            extra_eos.extend(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
        return cls(
            rust,
            bos_token=_token_content(config.get("bos_token")),
            eos_token=_token_content(config.get("eos_token")),
            pad_token=_token_content(config.get("pad_token")),
            add_bos_token=config.get("add_bos_token"),
            chat_template=chat_template,
            extra_eos_token_ids=extra_eos,
        )

    def _post_processor_adds_bos(self) -> bool:
        if self.bos_token_id is None:
            return False
        probe = self._tok.encode("a", add_special_tokens=True).ids
        return bool(probe) and probe[0] == self.bos_token_id

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`. A text that already starts with the BOS token (a rendered chat template)
        gets no second BOS."""
        if add_special_tokens and self.bos_token and text.startswith(self.bos_token):
            add_special_tokens = False
        ids: list[int] = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._prepend_bos and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]  # type: ignore[list-item]
        return ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    @cached_property
    def _compiled_template(self) -> Any:
        import jinja2
        import jinja2.ext  # loopcontrols; `import jinja2` alone does not load the ext submodule
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = lambda value, indent=None, ensure_ascii=False, **_: json.dumps(
            value, indent=indent, ensure_ascii=ensure_ascii
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        assert self.chat_template is not None
        return env.from_string(self.chat_template)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render messages with the checkpoint's chat template (the prompt text, special tokens included)."""
        if not self.chat_template:
            raise ValueError(
                "this tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja); "
                "use the completions endpoint or add a template"
            )
        return str(
            self._compiled_template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                pad_token=self.pad_token or "",
            )
        )


class IncrementalDetokenizer:
    """Text deltas for a growing completion; a delta never ends inside a multi-byte character.

    Decodes a small window (a few tokens of context before the unread ones) so that tokenizers which
    add a leading space or merge bytes across tokens give the same text as decoding everything.
    """

    CONTEXT_TOKENS = 5

    def __init__(self, tokenizer: HFTokenizer, prompt_token_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list(prompt_token_ids[-self.CONTEXT_TOKENS :])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def add(self, token_ids: Sequence[int], final: bool = False) -> str:
        """Add new completion tokens; return the text they complete (held back while a char is partial)."""
        self._ids.extend(token_ids)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith(REPLACEMENT_CHAR)):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            if self._prefix_offset > 64:  # keep the window small
                drop = self._prefix_offset
                self._ids = self._ids[drop:]
                self._prefix_offset -= drop
                self._read_offset -= drop
            return delta
        return ""
