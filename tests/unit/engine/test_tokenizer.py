"""HFTokenizer wrapper and incremental detokenization: deltas concatenate to the full decode and never
carry a broken UTF-8 character; chat templates render like HF's; BOS handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dssidecar.models.tokenizer import REPLACEMENT_CHAR, HFTokenizer, IncrementalDetokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

TEXT = [
    "def main(argv):\n    return 0\n",
    "héllo wörld — ünïcödé ✓ 日本語のテキスト 🚀🚀",
    "import os, sys\nprint('hello world')\n",
] * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer=trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>",
        "eos_token": {"content": "</s>"},
        "add_bos_token": True,
        "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}",
    }))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 5]}))
    return path


def test_reads_special_tokens_and_eos_ids(tokenizer_dir: Path) -> None:
    tok = HFTokenizer.from_dir(tokenizer_dir)
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert list(tok.eos_token_ids) == [1, 5]  # </s> is id 1, then generation_config's extra id


def test_encode_prepends_bos_once(tokenizer_dir: Path) -> None:
    tok = HFTokenizer.from_dir(tokenizer_dir)
    ids = tok.encode("hello world")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.encode("hello world", add_special_tokens=False) == ids[1:]
    assert tok.decode(ids) == "hello world"
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert rendered == "<s>[user] hi\n[assistant] "
    assert tok.encode(rendered).count(tok.bos_token_id) == 1


def test_bos_added_by_post_processor_is_not_doubled(tokenizer_dir: Path, tmp_path: Path) -> None:
    rust = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    rust.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    rust.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text((tokenizer_dir / "tokenizer_config.json").read_text())
    tok = HFTokenizer.from_dir(tmp_path)
    assert tok.encode("hello").count(0) == 1


def test_chat_template_missing_is_a_clear_error(tmp_path: Path, tokenizer_dir: Path) -> None:
    (tmp_path / "tokenizer.json").write_text((tokenizer_dir / "tokenizer.json").read_text())
    tok = HFTokenizer.from_dir(tmp_path)
    with pytest.raises(ValueError, match="chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_missing_tokenizer_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("text", TEXT[:3])
def test_incremental_deltas_join_to_the_full_text_without_broken_characters(tokenizer_dir: Path, text: str) -> None:
    tok = HFTokenizer.from_dir(tokenizer_dir)
    prompt = tok.encode("prompt: ")
    completion = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt)
    deltas = [detok.add([token]) for token in completion]
    deltas.append(detok.add([], final=True))
    assert "".join(deltas) == tok.decode(completion)
    assert not any(REPLACEMENT_CHAR in delta for delta in deltas)
    if any(ord(ch) > 127 for ch in text):
        assert "" in deltas[:-1]  # some byte-level tokens had to be held back
