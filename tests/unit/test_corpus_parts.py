"""Tests of domainllm.corpus.parts and per-part embedding: every row in exactly one part."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from domainllm.corpus.embed import embed_corpus, fit_embedder
from domainllm.corpus.parts import parse_part, part_names, part_range
from domainllm.errors import PipelineError


@pytest.mark.parametrize("n_rows", [0, 1, 5, 94, 1000])
@pytest.mark.parametrize("n_parts", [1, 2, 3, 7])
def test_parts_cover_every_row_once_in_order(n_rows, n_parts):
    ranges = [part_range(n_rows, i, n_parts) for i in range(n_parts)]
    rows = [r for lo, hi in ranges for r in range(lo, hi)]
    assert rows == list(range(n_rows))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_part_names_round_trip():
    assert part_names(3) == ["000-of-003", "001-of-003", "002-of-003"]
    assert [parse_part(p) for p in part_names(3)] == [(0, 3), (1, 3), (2, 3)]
    for bad in ("3-of-3", "seeds", "1of2", "-1-of-2"):
        with pytest.raises(PipelineError, match="not a corpus part name"):
            parse_part(bad)
    with pytest.raises(PipelineError, match=r"corpus\.parts\.n"):
        part_names(0)


def test_more_parts_than_documents_gives_empty_parts(tmp_path):
    texts = ["売上高は増加しました。", "営業利益は減少した。", "猫が寝ている。", "The cat sleeps."]
    pl.DataFrame({"id": list("abcd"), "text": texts}).write_parquet(tmp_path / "clean.parquet")
    pl.DataFrame({"text": ["当期の売上高", "経常利益"]}).write_parquet(tmp_path / "seeds.parquet")
    fit_embedder(
        str(tmp_path / "clean.parquet"),
        str(tmp_path / "seeds.parquet"),
        str(tmp_path / "state.npz"),
        str(tmp_path / "seeds.npy"),
        svd_dim=4,
    )
    seeds = np.load(tmp_path / "seeds.npy")
    assert seeds.shape[0] == 2 and seeds.dtype == np.float32
    rows = []
    for p in part_names(6):
        embed_corpus(
            str(tmp_path / "clean.parquet"),
            str(tmp_path / "state.npz"),
            str(tmp_path / f"{p}.npy"),
            str(tmp_path / f"{p}.ids.parquet"),
            part=p,
        )
        emb = np.load(tmp_path / f"{p}.npy")
        ids = pl.read_parquet(tmp_path / f"{p}.ids.parquet")["id"].to_list()
        assert emb.shape == (len(ids), seeds.shape[1])
        rows += ids
    assert rows == list("abcd")
