"""prepare_instructions on the real ELYZA-tasks-100, Self-Instruct and product-log samples."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from domainllm.data.instructions import prepare_instructions, read_product_log
from domainllm.errors import DataError, PipelineError
from tests.unit._tiny_lm import ELYZA, PRODUCT_LOG, SELF_INSTRUCT, prepare_sample_instructions

COLUMNS = ["id", "source", "instruction", "output", "feedback", "timestamp"]


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
    assert ev.columns == ["id", "prompt", "reference", "eval_aspect", "task", "answers"]
    assert (ev["task"] == "elyza").all()
    assert ev["answers"].to_list() == [[r] for r in ev["reference"]]
    assert cand.columns == COLUMNS
    assert ev.height == 30 and counts["per_source"]["elyza"] == n_elyza - 30
    elyza_train = cand.filter(pl.col("source") == "elyza")
    assert elyza_train.height == n_elyza - 30
    assert cand.filter(pl.col("source") == "self_instruct").height == n_seed  # one instance each
    # Held-out prompts never appear among training examples, by id or by text.
    assert not set(ev["id"]) & set(elyza_train["id"])
    assert not set(ev["prompt"]) & set(cand["instruction"])
    assert set(ev["id"]) | set(elyza_train["id"]) == {f"elyza/{i}" for i in range(1, n_elyza + 1)}
    assert cand["id"].n_unique() == cand.height
    assert cand["feedback"].null_count() == cand.height  # curated sets carry no feedback
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


def write_lines(path: Path, rows: list) -> Path:
    path.write_text(
        "".join(
            (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows
        ),
        encoding="utf-8",
    )
    return path


def test_product_log_sample_is_ingested_with_its_labels(tmp_path):
    sources = [
        {"name": "si", "format": "self_instruct", "path": str(SELF_INSTRUCT)},
        {"name": "logs", "format": "product_log", "path": str(PRODUCT_LOG)},
    ]
    counts = prepare_instructions(
        str(ELYZA), str(tmp_path / "c.parquet"), str(tmp_path / "e.parquet"),
        sources=sources, elyza_eval=30, seed=1,
    )  # fmt: skip
    cand = pl.read_parquet(tmp_path / "c.parquet")
    raw = [json.loads(line) for line in PRODUCT_LOG.read_text(encoding="utf-8").splitlines()]
    assert counts["per_source"] == {"elyza": 70, "si": 175, "logs": len(raw)}
    assert cand.columns == COLUMNS and cand.height == 70 + 175 + len(raw)
    # Sources keep the configured order; the source name prefixes each id.
    assert cand["source"].unique(maintain_order=True).to_list() == ["elyza", "si", "logs"]
    logs = cand.filter(pl.col("source") == "logs")
    assert logs["id"].to_list() == [f"logs/{r['id']}" for r in raw]
    assert logs["instruction"].to_list() == [r["prompt"] for r in raw]
    assert logs["output"].to_list() == [r["response"] for r in raw]
    assert logs["feedback"].to_list() == [r["feedback"] for r in raw]
    assert logs["feedback"].value_counts().sort("feedback")["count"].to_list() == [100, 100]
    assert logs["timestamp"].null_count() == logs.height  # HH-RLHF has no timestamps


def test_product_log_feedback_vocabularies_ids_and_timestamps(tmp_path):
    rows = [
        {
            "prompt": "q1",
            "response": "a",
            "feedback": "Thumbs Up",
            "timestamp": "2024-05-01T12:00:00+09:00",
        },
        {"prompt": "q2", "response": "a", "feedback": "thumbs-down", "timestamp": 1700000000},
        {"prompt": "q3", "response": "a", "feedback": "👍", "id": 7},
        {"prompt": "q4", "response": "a", "feedback": 0, "id": "x-1"},
        {"prompt": "q5", "response": "a", "feedback": True},
        {"prompt": "q6", "response": "a", "feedback": None},
        {"prompt": "q7", "response": "a"},
        {"prompt": "q8", "response": "a", "feedback": "NEGATIVE"},
    ]
    got = read_product_log(write_lines(tmp_path / "log.jsonl", rows), "app")
    assert [r["feedback"] for r in got] == ["good", "bad", "good", "bad", "good", None, None, "bad"]
    assert [r["id"] for r in got] == [
        "app/line1", "app/line2", "app/7", "app/x-1", "app/line5", "app/line6", "app/line7",
        "app/line8",
    ]  # fmt: skip
    assert got[0]["timestamp"] == "2024-05-01T12:00:00+09:00"
    assert got[1]["timestamp"] == "2023-11-14T22:13:20+00:00"
    assert got[2]["timestamp"] is None and got[0]["source"] == "app"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"prompt": "q", "response": "a", "feedback": "meh"},
            r":2: field 'feedback' has unknown value 'meh'",
        ),
        ({"prompt": "q", "feedback": "good"}, r":2: missing field 'response'"),
        ({"response": "a"}, r":2: missing field 'prompt'"),
        (
            {"prompt": "q", "response": "a", "timestamp": "yesterday"},
            r":2: field 'timestamp' 'yesterday'",
        ),
        ({"prompt": "q", "response": "a", "id": "one"}, r":2: id 'one' repeats line 1"),
        ({"prompt": "q", "response": 3}, r":2: field 'response' must be a string"),
    ],
)
def test_bad_product_log_line_is_named(tmp_path, row, message):
    path = write_lines(tmp_path / "log.jsonl", [{"id": "one", "prompt": "p", "response": "r"}, row])
    with pytest.raises(DataError, match=rf"{path}{message}"):
        read_product_log(path, "app")


def test_bad_source_entries_are_refused_before_writing(tmp_path):
    def go(sources):
        return prepare_instructions(
            str(ELYZA), str(tmp_path / "c.parquet"), str(tmp_path / "e.parquet"),
            sources=sources, elyza_eval=10, seed=1,
        )  # fmt: skip

    si = {"name": "si", "format": "self_instruct", "path": str(SELF_INSTRUCT)}
    with pytest.raises(PipelineError, match="source name 'elyza' is reserved"):
        go([{**si, "name": "elyza"}])
    with pytest.raises(PipelineError, match="source name 'si' is used twice"):
        go([si, si])
    with pytest.raises(PipelineError, match="unknown format 'csv'"):
        go([{**si, "format": "csv"}])
    with pytest.raises(DataError, match="instruction source 'si' does not exist"):
        go([{**si, "path": str(tmp_path / "missing.jsonl")}])
    # A Self-Instruct file read as a product log fails on its first line, naming it.
    with pytest.raises(DataError, match=rf"{SELF_INSTRUCT}:1: missing field 'prompt'"):
        go([{**si, "format": "product_log"}])
    assert not (tmp_path / "c.parquet").exists() and not (tmp_path / "e.parquet").exists()


def test_an_elyza_format_source_trains_on_every_item(tmp_path):
    extra = write_lines(
        tmp_path / "more.jsonl",
        [
            {"input": "売上高は？", "output": "増加しました。"},
            {"input": "利益は？", "output": "減少。"},
        ],
    )
    go = prepare_instructions(
        str(ELYZA), str(tmp_path / "c.parquet"), str(tmp_path / "e.parquet"),
        sources=[{"name": "more", "format": "elyza", "path": str(extra)}], elyza_eval=10, seed=1,
    )  # fmt: skip
    cand = pl.read_parquet(tmp_path / "c.parquet").filter(pl.col("source") == "more")
    assert go["per_source"]["more"] == 2
    assert cand.select("id", "instruction", "output").rows() == [
        ("more/1", "売上高は？", "増加しました。"),
        ("more/2", "利益は？", "減少。"),
    ]
