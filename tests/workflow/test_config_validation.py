"""The config schema rejects bad configs with the key path, and fills defaults."""

from __future__ import annotations

import copy

import pytest
import yaml

from domainllm.config import load_config, validate_config
from domainllm.errors import ConfigError
from tests.conftest import REPO, snakemake

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_and_test_configs_are_valid():
    for name in ("config.yaml", "test.yaml"):
        cfg = load_config(REPO / "config" / name)
        assert cfg["corpus"]["select"]["backend"] in {"tfidf-svd", "sentence-transformers"}


def test_defaults_are_filled():
    cfg = copy.deepcopy(DEFAULT)
    del cfg["corpus"]["clean"]
    validate_config(cfg)
    assert cfg["corpus"]["clean"]["min_chars"] == 20
    assert cfg["corpus"]["clean"]["dedup"] == "exact"


def test_unknown_key_is_named_with_its_path():
    cfg = copy.deepcopy(DEFAULT)
    cfg["cpt"]["max_stpes"] = 10
    with pytest.raises(ConfigError, match=r"unknown key 'cpt\.max_stpes'"):
        validate_config(cfg)


def test_unknown_key_inside_a_list_item():
    cfg = copy.deepcopy(DEFAULT)
    cfg["corpus"]["sources"][1]["fromat"] = "jsonl"
    with pytest.raises(ConfigError, match=r"corpus\.sources\[1\]\.fromat"):
        validate_config(cfg)


def test_wrong_type_is_named_with_its_path():
    cfg = copy.deepcopy(DEFAULT)
    cfg["sft"]["max_steps"] = "many"
    with pytest.raises(ConfigError, match=r"key 'sft\.max_steps': 'many' is not of type 'integer'"):
        validate_config(cfg)


def test_bad_enum_value():
    cfg = copy.deepcopy(DEFAULT)
    cfg["corpus"]["sources"][0]["format"] = "csv"
    with pytest.raises(ConfigError, match=r"corpus\.sources\[0\]\.format"):
        validate_config(cfg)


def test_snakemake_refuses_a_bad_config_with_the_key(tmp_path):
    bad = copy.deepcopy(DEFAULT)
    bad["generate"]["temprature"] = 0.7
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = snakemake("-n", "--cores", "1", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    assert "generate.temprature" in proc.stdout + proc.stderr


def test_cli_validates_and_names_a_missing_schema(tmp_path, capsys):
    from domainllm.cli import main

    assert main(["validate", str(REPO / "config" / "test.yaml")]) == 0
    assert main(["validate", str(REPO / "config" / "test.yaml"), "--schema", str(tmp_path)]) == 1
    assert "schema" in capsys.readouterr().err
