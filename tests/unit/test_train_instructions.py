"""prepare_instructions on the real ELYZA-tasks-100 and Self-Instruct seed files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from domainllm.errors import DataError
from tests.unit._tiny_lm import ELYZA, SELF_INSTRUCT, prepare_sample_instructions


def run(tmp_path: Path, *, elyza=ELYZA, self_instruct=SELF_INSTRUCT, n_eval=30, seed=1234):
    cand, ev = tmp_path / "cand.parquet", tmp_path / "eval.parquet"
    counts = prepare_sample_instructions(
        cand, ev, seed=seed, elyza_eval=n_eval, elyza=elyza, self_instruct=self_instruct
    )
    return counts, pl.read_parquet(cand), pl.read_parquet(ev)


def test_split_sizes_disjoint_and_complete(tmp_path):
    counts, cand, ev = run(tmp_path)
    n_elyza = sum(1 for line in ELYZA.read_text(encoding="utf-8").splitlines() if line.strip())
    n_seed = sum(
        1 for line in SELF_INSTRUCT.read_text(encoding="utf-8").splitlines() if line.strip()
    )
    assert ev.columns == ["id", "prompt", "reference", "eval_aspect"]
    assert cand.columns == ["id", "source", "instruction", "output"]
    assert ev.height == 30 and counts["train_elyza"] == n_elyza - 30
    elyza_train = cand.filter(pl.col("source") == "elyza")
    assert elyza_train.height == n_elyza - 30
    assert cand.filter(pl.col("source") == "self_instruct").height == n_seed  # one instance each
    # Held-out prompts never appear among training examples, by id or by text.
    assert not set(ev["id"]) & set(elyza_train["id"])
    assert not set(ev["prompt"]) & set(cand["instruction"])
    assert set(ev["id"]) | set(elyza_train["id"]) == {f"elyza/{i}" for i in range(1, n_elyza + 1)}
    assert cand["id"].n_unique() == cand.height
    # The first ELYZA item keeps its reference and aspect wherever it lands.
    first = json.loads(ELYZA.read_text(encoding="utf-8").splitlines()[0])
    row = pl.concat(
        [ev.select("id", reference="reference"), elyza_train.select("id", reference="output")]
    ).filter(pl.col("id") == "elyza/1")
    assert row["reference"][0] == first["output"]


def test_self_instruct_input_is_appended(tmp_path):
    _, cand, _ = run(tmp_path)
    row = cand.filter(pl.col("id") == "self_instruct/seed_task_1").row(0, named=True)
    assert (
        row["instruction"]
        == "What is the relation between the given pairs?\n\nNight : Day :: Right : Left"
    )
    assert row["output"] == "The relation between the given pairs is that they are opposites."
    no_input = cand.filter(pl.col("id") == "self_instruct/seed_task_0").row(0, named=True)
    assert no_input["instruction"].endswith("700-1000 calories?")


def test_split_is_deterministic_and_seeded(tmp_path):
    _, _, a = run(tmp_path / "a")
    _, _, b = run(tmp_path / "b")
    _, _, c = run(tmp_path / "c", seed=99)
    assert a["id"].to_list() == b["id"].to_list()
    assert a["id"].to_list() != c["id"].to_list()
    _, cand, ev = run(tmp_path / "d", self_instruct=None, n_eval=10)
    assert ev.height == 10 and set(cand["source"]) == {"elyza"}


def test_missing_answer_field_names_file_and_line(tmp_path):
    lines = ELYZA.read_text(encoding="utf-8").splitlines()[:5]
    broken = json.loads(lines[3])
    del broken["output"]
    lines[3] = json.dumps(broken, ensure_ascii=False)
    bad = tmp_path / "elyza.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bad}:4: missing field 'output'"):
        run(tmp_path, elyza=bad, n_eval=2)
    assert not (tmp_path / "cand.parquet").exists() and not (tmp_path / "eval.parquet").exists()

    seeds = SELF_INSTRUCT.read_text(encoding="utf-8").splitlines()[:3]
    task = json.loads(seeds[2])
    del task["instances"][0]["output"]
    seeds[2] = json.dumps(task)
    bad_seed = tmp_path / "seed.jsonl"
    bad_seed.write_text("\n".join(seeds) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bad_seed}:3: instances\[0\]: missing field 'output'"):
        run(tmp_path, self_instruct=bad_seed)


def test_too_many_held_out_items_is_an_error(tmp_path):
    with pytest.raises(DataError, match="elyza_eval=100"):
        run(tmp_path, n_eval=100)
