"""The demo checkpoint: complete HF layout, deterministic bytes, loadable by transformers with the same
logits as the model that wrote it, a working tokenizer and chat template, training that learns, and an
atomic write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dssidecar import demo_model as dm
from dssidecar.integrity import IntegrityError, verify_manifest

# A model small enough that a few training steps take well under a second.
MICRO = dm.ModelSize(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=8000, max_position_embeddings=256,
                     train_sequence_length=32, train_batch_size=4, train_learning_rate=5e-3)
EXPECTED_FILES = {"config.json", "generation_config.json", "manifest.json", "model.safetensors",
                  "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture()
def micro_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dm.SIZES, "micro", MICRO)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dm.write_demo_model(tmp_path_factory.mktemp(request.param) / "model", size="tiny", seed=0,
                               arch=request.param, log=None)


def _file_bytes(model_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(model_dir.iterdir())}


def test_tiny_checkpoint_has_hf_files_config_and_valid_manifest(tiny_dir: Path) -> None:
    assert {path.name for path in tiny_dir.iterdir()} == EXPECTED_FILES
    config = json.loads((tiny_dir / "config.json").read_text())
    arch = dm.ARCHS[config["model_type"]]
    assert config["architectures"] == [arch.architecture]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"]) == (256, 4, 4, 2, 8000)
    assert config["torch_dtype"] == "float32"
    assert config["tie_word_embeddings"] is arch.tie_word_embeddings
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == EXPECTED_FILES - {"manifest.json"}
    verify_manifest(tiny_dir)


def test_state_dict_uses_hf_names_and_parameter_count_is_tiny(tiny_dir: Path) -> None:
    from safetensors.torch import load_file

    config = json.loads((tiny_dir / "config.json").read_text())
    tensors = load_file(tiny_dir / "model.safetensors")
    assert "model.embed_tokens.weight" in tensors and "model.norm.weight" in tensors
    for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                 "input_layernorm.weight", "post_attention_layernorm.weight"):
        assert f"model.layers.3.{name}" in tensors
    assert ("model.layers.0.self_attn.q_proj.bias" in tensors) is (config["model_type"] == "qwen2")
    assert ("lm_head.weight" in tensors) is (not config["tie_word_embeddings"])
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (128, 256)  # 2 KV heads x 64
    assert all(tensor.dtype == torch.float32 for tensor in tensors.values())
    parameters = sum(tensor.numel() for tensor in tensors.values())
    assert 5_000_000 < parameters < 9_000_000


def test_same_seed_writes_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = _file_bytes(dm.write_demo_model(tmp_path / "a", seed=3, log=None))
    second = _file_bytes(dm.write_demo_model(tmp_path / "b", seed=3, log=None))
    other = _file_bytes(dm.write_demo_model(tmp_path / "c", seed=4, log=None))
    assert first == second
    assert first["model.safetensors"] != other["model.safetensors"]
    assert first["tokenizer.json"] == other["tokenizer.json"]  # the tokenizer depends on the corpus only


def test_training_is_deterministic_and_changes_weights(tmp_path: Path, micro_size: None) -> None:
    trained = _file_bytes(dm.write_demo_model(tmp_path / "a", size="micro", seed=1, train_steps=3, log=None))
    again = _file_bytes(dm.write_demo_model(tmp_path / "b", size="micro", seed=1, train_steps=3, log=None))
    untrained = _file_bytes(dm.write_demo_model(tmp_path / "c", size="micro", seed=1, train_steps=0, log=None))
    assert trained == again
    assert trained["model.safetensors"] != untrained["model.safetensors"]


def test_training_lowers_next_token_loss(micro_size: None) -> None:
    arch = dm.ARCHS["qwen2"]
    sections = dm.read_corpus_sections()
    tokenizer = dm.train_tokenizer(sections, arch, MICRO.vocab_size)
    tokens = dm._token_stream(sections[:200], tokenizer, tokenizer.token_to_id(arch.eos_token))
    generator = torch.Generator().manual_seed(0)
    model = dm.DemoCausalLM(MICRO, arch)
    model.initialize(generator)
    messages: list[str] = []
    losses = dm.train_model(model, tokens, 30, generator, messages.append)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:3]) / 3 - 1.0
    assert messages and messages[-1].startswith("train step 30/30 loss")


def test_transformers_loads_it_with_the_same_logits(tiny_dir: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is the reference")
    from safetensors.torch import load_file

    config = json.loads((tiny_dir / "config.json").read_text())
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    own = dm.DemoCausalLM(dm.SIZES["tiny"], dm.ARCHS[config["model_type"]])
    own.load_state_dict(load_file(tiny_dir / "model.safetensors"), strict=not config["tie_word_embeddings"])
    own.eval()
    input_ids = torch.tensor([[5, 100, 2000, 7000, 42, 3, 999, 1234, 17, 256]])
    with torch.no_grad():
        hf_logits = hf_model(input_ids).logits
        own_logits = own(input_ids)
    torch.testing.assert_close(own_logits, hf_logits, rtol=1e-4, atol=1e-5)


def test_tokenizer_round_trips_text_and_chat_template_renders(tiny_dir: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="AutoTokenizer checks HF compatibility")
    config = json.loads((tiny_dir / "config.json").read_text())
    arch = dm.ARCHS[config["model_type"]]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    text = "def greet(name):\n    return f'Hello, {name}! ünïcode'"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert max(ids) < config["vocab_size"]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    if arch.model_type == "qwen2":
        assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    else:
        assert rendered == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                            "<|start_header_id|>assistant<|end_header_id|>\n\n")
    for token in arch.special_tokens:
        assert tokenizer.convert_tokens_to_ids(token) == tokenizer(token, add_special_tokens=False).input_ids[0]
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids(arch.end_of_turn_token) in generation["eos_token_id"]


def test_failed_write_leaves_neither_target_nor_staging_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            micro_size: None) -> None:
    import safetensors.torch

    def broken_save(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        dm.write_demo_model(tmp_path / "model", size="micro", log=None)
    assert list(tmp_path.iterdir()) == []


def test_existing_model_is_replaced_but_other_directories_are_refused(tmp_path: Path, micro_size: None) -> None:
    target = dm.write_demo_model(tmp_path / "model", size="micro", seed=0, log=None)
    (target / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(IntegrityError):
        verify_manifest(target)
    dm.write_demo_model(target, size="micro", seed=0, log=None)
    verify_manifest(target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a model checkpoint"):
        dm.write_demo_model(precious, size="micro", log=None)
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": "huge"}, "size 'huge' is not one of"),
    ({"arch": "gpt2"}, "arch 'gpt2' is not one of"),
    ({"train_steps": -1}, "train_steps must be >= 0"),
])
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dm.write_demo_model(tmp_path / "m", log=None, **kwargs)  # type: ignore[arg-type]


def test_cli_demo_model_writes_a_checkpoint(tmp_path: Path, micro_size: None) -> None:
    from dssidecar.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["demo-model", str(tmp_path / "cli"), "--size", "micro", "--seed", "2",
                                      "--arch", "llama"])
    assert result.exit_code == 0, result.output
    verify_manifest(tmp_path / "cli")
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["model_type"] == "llama"
