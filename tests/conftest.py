"""Shared fixtures: tiny transformers models built on the spot (no hub access)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def config_only_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding just a Llama config (hidden 192, intermediate 384): enough for validation."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("config-only")
    LlamaConfig(vocab_size=64, hidden_size=192, intermediate_size=384, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2).save_pretrained(path)
    return path


def write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


PARSER_CASES = Path(__file__).parent / "fixtures" / "parser_cases.yaml"


def parser_case_groups() -> dict[str, dict]:
    """The golden parser cases (tests/fixtures/parser_cases.yaml), one group per answer form."""
    return yaml.safe_load(PARSER_CASES.read_text())


KEY_ENV = "SLIMLAB_TEST_KEY"  # the environment variable API-model and judge tests put their fake key in


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh fake key in $SLIMLAB_TEST_KEY (tests check that no piece of it reaches a file or the console)."""
    key = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(KEY_ENV, key)
    return key
