"""ModelConfig reads both config.json layouts, refuses what the model code cannot run (naming the
field), and computes RoPE frequencies (default, linear, llama3) exactly like transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dssidecar.models.config import ModelConfig
from dssidecar.models.llama import rope_inverse_frequencies

BASE = {
    "model_type": "llama",
    "vocab_size": 1000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 1024}


def test_old_and_new_rope_layouts_give_the_same_config() -> None:
    old = ModelConfig.from_dict({**BASE, "rope_theta": 5e5, "rope_scaling": LLAMA3})
    new = ModelConfig.from_dict({**BASE, "rope_parameters": {**LLAMA3, "rope_theta": 5e5}})
    assert old.rope_theta == new.rope_theta == 5e5
    assert old.rope_scaling is not None and new.rope_scaling is not None
    assert old.rope_scaling["factor"] == new.rope_scaling["factor"] == 8.0
    assert old.head_dim == 16 and not old.attention_bias


def test_qwen2_always_has_qkv_bias_and_eos_list_is_read() -> None:
    config = ModelConfig.from_dict({**BASE, "model_type": "qwen2", "eos_token_id": [3, 4]})
    assert config.attention_bias and config.eos_token_ids == (3, 4)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2'"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope scaling type 'yarn'"),
    ],
)
def test_unsupported_configs_are_refused_with_the_field_named(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**BASE, **patch})


def test_missing_and_broken_config_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps(BASE))
    assert ModelConfig.from_file(tmp_path / "config.json").num_hidden_layers == 2


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0}, LLAMA3])
def test_rope_frequencies_match_transformers(scaling: dict[str, object] | None) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    raw = {**BASE, "rope_theta": 500000.0, "rope_scaling": scaling}
    ours = rope_inverse_frequencies(ModelConfig.from_dict(raw))
    if scaling is None:
        expected = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.int64).float() / 16))
    else:
        hf_config = transformers.LlamaConfig(**{k: v for k, v in raw.items() if k != "model_type"})
        expected, _ = ROPE_INIT_FUNCTIONS[str(scaling["rope_type"])](hf_config, torch.device("cpu"))
    assert torch.allclose(ours, expected.float(), rtol=1e-6)
