"""Tests of domainllm.corpus.embed and domainllm.corpus.select on real sample text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.corpus.embed import default_sentence_model, get_embedder
from domainllm.corpus.readers import SourceStats, read_mediawiki
from domainllm.corpus.select import cut_threshold, select_domain, similarity_scores
from domainllm.data.domain import read_domain_docs
from domainllm.errors import PipelineError

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
FINANCIAL = (
    "当連結会計年度における売上高は前期比で増加し、営業利益および経常利益も増益となりました。"
)


@pytest.fixture(scope="module")
def domain() -> list[dict]:
    return read_domain_docs(str(SAMPLES / "chabsa" / "chabsa_all.jsonl"))


@pytest.fixture(scope="module")
def wiki_pages() -> list:
    """The first 30 articles of the Japanese test dump."""
    docs = []
    for doc in read_mediawiki(
        {"path": str(SAMPLES / "wiki_dumps" / "wp2txt_testdata_ja.xml.bz2")}, SourceStats(), "k"
    ):
        docs.append(doc)
        if len(docs) == 30:
            break
    return docs


@pytest.fixture(scope="module")
def files(tmp_path_factory, domain, wiki_pages):
    """A cleaned-corpus table (30 wiki articles, 60 Wikipedia sentences, one financial
    sentence, three held-out chABSA reports) and a seed table of 60 other reports."""
    tmp = tmp_path_factory.mktemp("select")
    ner = json.loads((SAMPLES / "stockmark_ner_wikipedia" / "ner.json").read_text(encoding="utf-8"))
    rows = [
        {"id": f"wiki/{d.key}", "source": "wiki", "title": d.title, "text": d.text}
        for d in wiki_pages
    ]
    rows += [
        {"id": f"ner/{i}", "source": "ner", "title": "", "text": d["text"]}
        for i, d in enumerate(ner[:60])
    ]
    rows.append({"id": "fin/0", "source": "fin", "title": "", "text": FINANCIAL})
    rows += [
        {"id": f"held/{d['id']}", "source": "held", "title": d["title"], "text": d["text"]}
        for d in domain[60:63]
    ]
    corpus = pl.DataFrame(rows).with_columns(pl.lit("ja").alias("lang"))
    corpus.write_parquet(tmp / "clean.parquet")
    pl.DataFrame(domain[:60]).write_parquet(tmp / "seeds.parquet")
    return tmp


def run(files, name, **kw):
    out, rep = files / f"{name}.parquet", files / f"{name}.json"
    select_domain(
        str(files / "clean.parquet"), str(files / "seeds.parquet"), str(out), str(rep), seed=3, **kw
    )
    return pl.read_parquet(out), json.loads(rep.read_text())


def test_tfidf_svd_embeddings_are_normalised_and_deterministic(domain):
    texts = [d["text"] for d in domain[:40]] + ["猫は哺乳類である。", "The cat sat on the mat."]
    a = get_embedder("tfidf-svd", svd_dim=16, seed=1).fit_encode(texts)
    b = get_embedder("tfidf-svd", svd_dim=16, seed=1)
    b_emb = b.fit(texts).encode(texts)
    assert a.dtype == np.float32 and a.shape == (42, 16)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.allclose(a, b_emb, atol=1e-5)
    with pytest.raises(PipelineError, match="corpus.select.backend"):
        get_embedder("word2vec")


def test_selection_ranks_domain_text_above_wiki(files):
    selected, report = run(
        files, "q", backend="tfidf-svd", svd_dim=32, score="centroid", method="quantile", value=0.5
    )
    scored, _ = run(
        files,
        "all",
        backend="tfidf-svd",
        svd_dim=32,
        score="centroid",
        method="threshold",
        value=-1.0,
    )
    score = dict(zip(scored["id"], scored["score"], strict=True))
    wiki = [v for k, v in score.items() if k.startswith("wiki/")]
    assert score["fin/0"] > max(wiki)
    assert min(v for k, v in score.items() if k.startswith("held/")) > max(wiki)
    assert scored["score"].to_list() == sorted(scored["score"], reverse=True)
    assert report["n_in"] == scored.height == 94 and report["n_kept"] == selected.height
    assert selected.columns == ["id", "source", "title", "text", "lang", "score"]
    assert selected.height == int((scored["score"] >= report["threshold"]).sum()) >= 47
    assert set(report["score_quantiles"]) == {"0.0", "0.1", "0.25", "0.5", "0.75", "0.9", "1.0"}
    assert report["per_source"]["held"] == {
        "n_in": 3,
        "n_kept": 3,
        "mean_score": pytest.approx(
            np.mean([score[k] for k in score if k.startswith("held/")]), abs=1e-5
        ),
    }
    again, _ = run(
        files, "q2", backend="tfidf-svd", svd_dim=32, score="centroid", method="quantile", value=0.5
    )
    assert again.equals(selected)


def test_top_k_and_topk_mean(files):
    top, report = run(
        files,
        "k",
        backend="tfidf-svd",
        svd_dim=32,
        score="topk_mean",
        topk=3,
        method="top_k",
        value=4,
    )
    assert top.height == 4 and report["method"] == "top_k"
    assert set(top["source"]) <= {"fin", "held"}


def test_cuts_that_keep_nothing_or_bad_values_name_the_key(files):
    with pytest.raises(PipelineError, match=r"corpus\.select\.value.*keeps no document"):
        run(files, "none", backend="tfidf-svd", svd_dim=8, method="threshold", value=0.9999)
    with pytest.raises(PipelineError, match=r"corpus\.select\.value"):
        run(files, "badq", backend="tfidf-svd", svd_dim=8, method="quantile", value=1.5)
    with pytest.raises(PipelineError, match=r"corpus\.select\.value"):
        cut_threshold(np.array([0.1, 0.2]), "top_k", 2.5)
    assert not (files / "none.parquet").exists()


def test_similarity_scores_math():
    seeds = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    docs = np.array([[1, 0], [0, 1]], dtype=np.float32)
    c = seeds.mean(0) / np.linalg.norm(seeds.mean(0))
    assert np.allclose(similarity_scores(docs, seeds, score="centroid"), docs @ c)
    assert np.allclose(similarity_scores(docs, seeds, score="topk_mean", topk=2), [0.9, 0.8])


def test_sentence_transformers_backend_uses_the_shipped_model():
    assert (default_sentence_model() / "config.json").is_file()
    emb = get_embedder("sentence-transformers", model=None)
    texts = [
        "Revenue and operating profit increased.",
        "Sales grew strongly this year.",
        "The cat is sleeping on the sofa.",
    ]
    x = emb.fit_encode(texts)
    assert x.dtype == np.float32 and x.shape == (3, 384)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-4)
    assert x[0] @ x[1] > x[0] @ x[2]
    # Order-independent: length sorting inside encode() is undone.
    assert np.allclose(emb.encode(texts[::-1])[::-1], x, atol=1e-5)


@pytest.mark.gpu
def test_sentence_transformers_on_cuda_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    texts = [
        "当期の売上高は増加しました。",
        "The weather is nice today.",
        "営業利益は減少した。",
    ] * 40
    gpu = get_embedder("sentence-transformers", model=None, device="cuda")
    cpu = get_embedder("sentence-transformers", model=None, device="cpu")
    x, y = gpu.encode(texts), cpu.encode(texts)
    assert gpu.model.dtype == torch.float16 and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-3)
    assert (np.sum(x * y, axis=1) > 0.99).all()
