"""`domainllm verify`: write-time checksums, shard manifests and format checks find every
corruption of a small real run folder by name, and a clean folder verifies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.cli import main
from domainllm.corpus.shards import write_shards
from domainllm.io import atomic_path, write_json, write_parquet, write_text
from domainllm.verify import CHECKSUMS, verify
from tests.unit._tiny_lm import build_tokenizer, sample_texts, save_folder, tiny_llama

MODEL = "models/tiny/sft"
SHARDS = "shards/tiny"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A results folder as the workflow leaves it: recorded artifacts of every kind, plus a
    few files written without a record (checked by format)."""
    results = tmp_path_factory.mktemp("verify") / "results"
    (results / CHECKSUMS).mkdir(parents=True)
    texts = sample_texts(40)
    docs = pl.DataFrame(
        {"id": [f"d/{i}" for i in range(len(texts))], "source": ["chabsa"] * len(texts),
         "text": texts}
    )  # fmt: skip
    write_parquet(docs, results / "corpus" / "selected.parquet")
    write_json({"kept": len(texts)}, results / "corpus" / "stats.json")
    write_text("# report\n", results / "corpus" / "report.md")
    tok = build_tokenizer(texts, 400)
    with atomic_path(results / MODEL, directory=True) as tmp:
        save_folder(tmp, tiny_llama(tok, hidden=16, heads=2), tok)
        write_json({"steps": 1}, tmp / "train_metrics.json")  # inside: no record of its own
    write_shards(
        str(results / "corpus" / "selected.parquet"), str(results / MODEL),
        str(results / SHARDS), tokens_per_shard=1000, validation_fraction=0.1,
    )  # fmt: skip
    # Written without the package's writers: no record, checked by format only.
    unrecorded = results / "extra"
    unrecorded.mkdir()
    docs.write_parquet(unrecorded / "plain.parquet")
    shutil.copy(results / MODEL / "model.safetensors", unrecorded / "model.safetensors")
    (unrecorded / "metrics.json").write_text('{"a": 1}\n')
    np.save(unrecorded / "emb.npy", np.arange(100, dtype=np.float32).reshape(10, 10))
    return results


@pytest.fixture
def results(pristine, tmp_path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(pristine, out)
    return out


def run_cli(results: Path, capsys) -> tuple[int, str]:
    code = main(["verify", str(results)])
    return code, capsys.readouterr().out


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def test_a_clean_folder_verifies(results, capsys):
    records = sorted(p.relative_to(results / CHECKSUMS).as_posix() for p in
                     (results / CHECKSUMS).rglob("*.json"))  # fmt: skip
    # One record per atomic write; the model folder's own files are in its record.
    assert records == [
        "corpus/report.md.json", "corpus/selected.parquet.json", "corpus/stats.json.json",
        f"{MODEL}.json", f"{SHARDS}.json",
    ]  # fmt: skip
    model = json.loads((results / CHECKSUMS / f"{MODEL}.json").read_text())
    assert model["kind"] == "directory"
    assert {"config.json", "model.safetensors", "train_metrics.json"} <= set(model["files"])
    report = verify(results)
    assert report.ok and not report.warnings, report.summary()
    assert report.by_record >= 10 and report.by_manifest >= 3 and report.by_format == 4
    code, out = run_cli(results, capsys)
    assert code == 0 and "0 problem(s)" in out


def shard(results: Path, i: int = 1) -> Path:
    manifest = json.loads((results / SHARDS / "manifest.json").read_text())
    assert len(manifest["shards"]) > i
    return results / SHARDS / manifest["shards"][i]["file"]


def write_json_plain(path: Path) -> None:
    """An edit by hand: valid JSON, other bytes."""
    path.write_text(json.dumps({"kept": 0, "edited": True}))


def add_file(path: Path) -> None:
    path.write_bytes(b"x")


# name: (the file (a path under results, or a function of results), what is done to it,
#        what the report says)
CASES = {
    "byte flipped in a recorded parquet": ("corpus/selected.parquet", flip_byte, "sha256 differs"),
    "recorded json edited": ("corpus/stats.json", write_json_plain, "when written"),
    "whole artifact deleted": ("corpus/report.md", Path.unlink, "missing"),
    "model weights truncated": (f"{MODEL}/model.safetensors", truncate, "truncated"),
    "model config deleted": (f"{MODEL}/config.json", Path.unlink, "missing from its folder"),
    "file added to a model folder": (f"{MODEL}/pytorch_model.bin", add_file, "added afterwards"),
    "shard deleted": (shard, Path.unlink, "missing"),
    "byte flipped in a shard": (shard, flip_byte, "sha256"),
    "unrecorded parquet truncated": ("extra/plain.parquet", truncate, "Parquet"),
    "unrecorded safetensors truncated": ("extra/model.safetensors", truncate, "truncated"),
    "unrecorded json cut": ("extra/metrics.json", truncate, "invalid JSON"),
    "unrecorded npy truncated": ("extra/emb.npy", truncate, "header needs"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_corruption_is_reported_by_name(results, capsys, case):
    where, corrupt, why = CASES[case]
    bad = results / where if isinstance(where, str) else where(results)
    corrupt(bad)
    report = verify(results)
    named = [(p, w) for p, w in report.problems if Path(p) == bad]
    assert named and any(why in w for _, w in named), report.summary()
    code, out = run_cli(results, capsys)
    assert code == 1
    assert any(line.startswith(f"BAD  {bad}:") and why in line for line in out.splitlines()), out


def test_only_the_corrupted_file_is_reported(results):
    flip_byte(results / "corpus/selected.parquet")
    report = verify(results)
    assert [p for p, _ in report.problems] == [str(results / "corpus/selected.parquet")]


def test_leftovers_of_interrupted_writes_are_warnings_not_errors(results, capsys):
    (results / "corpus" / ".clean.parquet.tmp-12345").write_bytes(b"PAR1 partial")
    (results / "models" / ".cpt.tmp-999").mkdir()
    report = verify(results)
    assert report.ok
    assert sorted(Path(p).name for p, _ in report.warnings) == [
        ".clean.parquet.tmp-12345", ".cpt.tmp-999",
    ]  # fmt: skip
    code, out = run_cli(results, capsys)
    assert code == 0 and "WARN" in out and "interrupted write" in out


def test_shards_are_recorded_from_their_manifest_without_reading_them_again(
    pristine, tmp_path, monkeypatch
):
    """The record of a shard folder takes each shard's digest from the manifest (hashed
    while writing), and it is the digest of the bytes on disk."""
    import domainllm.verify as verify_module
    from domainllm.verify import describe, record_path

    read = []
    real = verify_module.sha256_file
    monkeypatch.setattr(verify_module, "sha256_file", lambda p: read.append(Path(p)) or real(p))
    results = tmp_path / "results"
    (results / CHECKSUMS).mkdir(parents=True)
    write_shards(
        str(pristine / "corpus" / "selected.parquet"), str(pristine / MODEL),
        str(results / SHARDS), tokens_per_shard=1000, validation_fraction=0.1,
    )  # fmt: skip
    assert read and not [p for p in read if p.suffix == ".bin"]  # manifest, documents only
    record = json.loads(record_path(results, results / SHARDS).read_text())
    shards = {k: v for k, v in record["files"].items() if k.endswith(".bin")}
    assert len(shards) > 2
    monkeypatch.undo()
    assert shards == {k: v for k, v in describe(results / SHARDS)["files"].items() if k in shards}


def test_nothing_is_recorded_outside_a_results_folder(tmp_path):
    write_json({"a": 1}, tmp_path / "x" / "a.json")
    assert not list(tmp_path.rglob(CHECKSUMS))
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["a.json"]


def test_a_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope")]) == 1
    assert "no such results folder" in capsys.readouterr().err
