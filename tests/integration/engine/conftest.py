"""Checkpoints for the engine's correctness tests.

Two sources, so a bug in one writer cannot hide a bug in the engine: checkpoints written by
transformers' own classes (save_pretrained, with a BPE tokenizer trained on the repo's corpus; peaky
random weights so greedy comparisons have no near-ties) and the project's demo models
(dssidecar.demo_model through tests/conftest.py's cached fixtures). No model hub is involved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
CORPUS = REPO_ROOT / "sidecar" / "dssidecar" / "data" / "corpus.txt"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_hf_checkpoint(target: Path, arch: str, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    target.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = CORPUS.read_text(encoding="utf-8") if CORPUS.is_file() else "hello world " * 100
    tokenizer.train_from_iterator(text.splitlines(), trainer=trainer)
    tokenizer.save(str(target / "tokenizer.json"))
    eos_id = tokenizer.token_to_id("<|endoftext|>")
    (target / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|endoftext|>", "bos_token": None, "chat_template": CHATML_TEMPLATE})
    )
    common = dict(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
        eos_token_id=eos_id,
    )
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, rope_theta=10000.0, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, rope_theta=500000.0, **common))
    model.save_pretrained(str(target), safe_serialization=True)
    return target


@pytest.fixture(scope="session", params=["hf-qwen2", "hf-llama", "demo-qwen2", "demo-llama"])
def checkpoint_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both architectures, written by transformers itself (hf-*) and by the project's demo_model (demo-*)."""
    source, arch = str(request.param).split("-")
    if source == "demo":
        fixture = "tiny_model_dir" if arch == "qwen2" else "tiny_llama_model_dir"
        return Path(request.getfixturevalue(fixture))
    return write_hf_checkpoint(tmp_path_factory.mktemp("ckpt") / arch, arch)


@pytest.fixture(scope="session")
def qwen2_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen2", "qwen2")
