"""The same config and seed give the same artifacts: config/test.yaml run twice, in two
working directories, up to the evaluation table, compared file by file by sha256.

Byte-identical (CPU): the documents, the cleaned corpus and its statistics, the
embeddings and the selection, the base candidates (tokenizers and weights), the
selection table, the shards, every trained and quantised model, the generations,
per-item scores and the evaluation table. The only files allowed to differ are JSON
records whose differences are timings (``seconds``, ``runtime``, tokens per second)
and a model card's training time; they must match once those are removed. Training
checkpoints (``results/checkpoints/``, Trainer state with runtimes) are not artifacts
and are not compared. Why GPU runs are not byte-identical: docs/reliability.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from domainllm.verify import CHECKSUMS, verify
from tests.reliability._runs import digest, run_seconds, tiny_run

pytestmark = pytest.mark.slow

# Keys holding wall-clock measurements (removed before comparing JSON records).
TIMING_KEY = re.compile(r"seconds|runtime|tokens_per_s|per_second|^timings$")
TIMING_TEXT = re.compile(r"\b(Trained in) \d+(\.\d+)? s\b")

# What the issue names, checked by name so the comparison below cannot lose them.
REQUIRED = [
    "results/corpus/docs.parquet",
    "results/corpus/clean.parquet",
    "results/corpus/stats.json",
    "results/corpus/selected.parquet",
    "results/corpus/selection.json",
    "results/selection/table.parquet",
    "results/eval/table.parquet",
    "results/eval/table.md",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_run(tmp_path_factory, "a"), tiny_run(tmp_path_factory, "b")


def artifacts(work: Path) -> dict[str, Path]:
    """Every file under results/, less checkpoints and write-time checksum records."""
    root = work / "results"
    skip = {CHECKSUMS, "checkpoints"}
    return {
        str(p.relative_to(work)): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not TIMING_KEY.search(k)}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def test_two_runs_give_the_same_artifacts(runs):
    a, b = runs
    files_a, files_b = artifacts(a), artifacts(b)
    assert sorted(files_a) == sorted(files_b)
    assert set(REQUIRED) <= set(files_a)
    identical, timed, different = [], [], []
    for name, pa in files_a.items():
        pb = files_b[name]
        if digest(pa) == digest(pb):
            identical.append(name)
        elif name.endswith(".json") and without_timings(
            json.loads(pa.read_text())
        ) == without_timings(json.loads(pb.read_text())):
            timed.append(name)
        elif name.endswith(".md") and TIMING_TEXT.sub(r"\1 N s", pa.read_text()) == (
            TIMING_TEXT.sub(r"\1 N s", pb.read_text())
        ):
            timed.append(name)
        else:
            different.append(name)
    assert different == [], f"differ between identical runs: {different}"
    assert set(REQUIRED) <= set(identical)
    # Shards, tokenizers and weights of every model, byte for byte.
    chosen = json.loads((a / "results/selection/chosen.json").read_text())["name"]
    for name in (
        f"results/shards/{chosen}/manifest.json",
        f"results/base/{chosen}/tokenizer.json",
        f"results/base/{chosen}/model.safetensors",
        "results/models/tiny-test/cpt/model.safetensors",
        "results/models/tiny-test/sft/model.safetensors",
        "results/models/tiny-test/sft-gptq/model.safetensors",
    ):
        assert name in identical, name
    assert any(n.startswith(f"results/shards/{chosen}/train/shard_") for n in identical)
    print(
        f"\n{len(identical)} files identical, {len(timed)} equal but for timings; "
        f"runs took {run_seconds('a'):.0f} s and {run_seconds('b'):.0f} s"
    )


def test_the_evaluation_table_holds_the_same_numbers(runs):
    a, b = runs
    ta = pl.read_parquet(a / "results/eval/table.parquet")
    tb = pl.read_parquet(b / "results/eval/table.parquet")
    assert ta.height >= 4 and ta.equals(tb, null_equal=True)


def test_a_finished_run_verifies(runs):
    for work in runs:
        report = verify(work / "results")
        assert report.ok and report.warnings == [], report.summary()
        assert report.by_record > 100  # the workflow recorded its artifacts as it wrote them
