"""A new cut re-ranks cached embeddings: Snakemake reruns select_domain, never embed_corpus.

Runs the corpus selection of a tiny config for real (so Snakemake records each
job's params), then changes one config key at a time and reads the dry-run plan.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import polars as pl
import pytest
import yaml

from tests.conftest import make_workdir, snakemake

TINY = {
    "data": {"domain": {"seed_docs": 20, "heldout_docs": 5}},
    "corpus": {
        "sources": [
            {
                "name": "jawiki",
                "format": "mediawiki",
                "path": "data/samples/wiki_dumps/wp2txt_testdata_ja.xml.bz2",
                "lang": "ja",
                "limit": 40,
            },
            {
                "name": "ja_sentences",
                "format": "json",
                "path": "data/samples/stockmark_ner_wikipedia/ner.json",
                "text_field": "text",
                "id_field": "curid",
                "lang": "ja",
                "limit": 200,
            },
        ],
        "parts": {"n": 3},
        "select": {"method": "quantile", "value": 0.5},
    },
}
TARGET = "results/corpus/selected.parquet"


def planned(work, config: dict, *extra: str) -> set[str]:
    """Rules the dry run of ``config`` would run to make the selection."""
    path = work / "plan.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(TARGET, "-n", "--cores", "1", *extra, "--configfile", str(path), cwd=work)
    return set(re.findall(r"^\s*(?:local)?rule (\w+):", proc.stdout, re.M))


def with_key(config: dict, section: str, key: str, value) -> dict:
    out = copy.deepcopy(config)
    out["corpus"][section][key] = value
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = make_workdir(tmp_path_factory.mktemp("rerun"))
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    snakemake(TARGET, "--cores", "2", "--configfile", "tiny.yaml", cwd=work, timeout=600)
    return work


def embedding_files(work):
    folder = work / "results/corpus/embeddings"
    files = sorted(folder.glob("*")) + [work / "results/corpus/embedder.npz"]
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def test_the_parts_are_separate_jobs(work):
    names = sorted(p.name for p in (work / "results/corpus/embeddings").glob("*.npy"))
    assert names == ["000-of-003.npy", "001-of-003.npy", "002-of-003.npy", "seeds.npy"]
    for part in ("000-of-003", "001-of-003", "002-of-003"):
        assert (work / f"logs/embed_corpus/{part}.log").is_file()
    assert planned(work, TINY) == set()


def test_a_new_cut_reruns_only_select_domain(work):
    tighter = with_key(TINY, "select", "value", 0.8)
    assert planned(work, tighter, "--rerun-triggers", "params") == {"select_domain"}
    assert planned(work, tighter) == {"select_domain"}  # all default triggers
    assert planned(work, with_key(TINY, "select", "method", "top_k")) == {"select_domain"}
    assert planned(work, with_key(TINY, "select", "score", "topk_mean")) == {"select_domain"}

    before = embedding_files(work)
    loose = pl.read_parquet(work / TARGET)
    (work / "tight.yaml").write_text(yaml.safe_dump(tighter))
    snakemake(TARGET, "--cores", "1", "--configfile", "tight.yaml", cwd=work)
    tight = pl.read_parquet(work / TARGET)
    assert embedding_files(work) == before
    assert set(tight["id"]) < set(loose["id"])
    assert np.all(np.diff(tight["score"].to_numpy()) <= 0)
    assert (work / "results/corpus/selection_hist.png").stat().st_size > 0
    assert "## Top kept" in (work / "results/corpus/selection_report.md").read_text()


def test_embedding_settings_and_part_count_re_embed(work):
    # The trigger is not dead: what shapes the embeddings reruns the embedding jobs.
    assert planned(work, with_key(TINY, "select", "svd_dim", 16), "--rerun-triggers", "params") >= {
        "fit_embedder",
        "embed_corpus",
        "select_domain",
    }
    more_parts = with_key(TINY, "parts", "n", 4)
    assert planned(work, more_parts) == {"embed_corpus", "select_domain"}
