"""Tests of domainllm.corpus.embed and domainllm.corpus.select on real sample text.

The selection runs as the workflow runs it: ``fit_embedder`` once, ``embed_corpus``
per part, ``select_domain`` on the cached embeddings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from domainllm.corpus.embed import (
    default_sentence_model,
    embed_corpus,
    fit_embedder,
    get_embedder,
    load_embedder,
    save_embedder,
)
from domainllm.corpus.parts import part_names
from domainllm.corpus.readers import SourceStats, read_mediawiki
from domainllm.corpus.select import cut_threshold, select_domain, similarity_scores
from domainllm.data.domain import read_domain_docs
from domainllm.errors import DataError, PipelineError

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


def embed(files: Path, n_parts: int, *, name: str | None = None, **kw) -> Path:
    """fit_embedder + one embed_corpus per part into files/<name>; returns that folder."""
    out = files / (name or f"emb{n_parts}")
    if not (out / "state.npz").exists():
        kw = {"backend": "tfidf-svd", "svd_dim": 32, "seed": 3, **kw}
        fit_embedder(
            str(files / "clean.parquet"),
            str(files / "seeds.parquet"),
            str(out / "state.npz"),
            str(out / "seeds.npy"),
            **kw,
        )
        for p in part_names(n_parts):
            embed_corpus(
                str(files / "clean.parquet"),
                str(out / "state.npz"),
                str(out / f"{p}.npy"),
                str(out / f"{p}.ids.parquet"),
                part=p,
                chunk_docs=25,
            )
    return out


def cut(emb: Path, name: str, n_parts: int = 2, reports: bool = False, **kw):
    """select_domain on the cached embeddings in ``emb``; returns (selected, report)."""
    files = emb.parent
    out, rep = emb / f"{name}.parquet", emb / f"{name}.json"
    extra = {"histogram": str(emb / f"{name}.png"), "markdown": str(emb / f"{name}.md")}
    select_domain(
        str(files / "clean.parquet"),
        str(emb / "seeds.npy"),
        [str(emb / f"{p}.npy") for p in part_names(n_parts)],
        [str(emb / f"{p}.ids.parquet") for p in part_names(n_parts)],
        str(out),
        str(rep),
        embedder=str(emb / "state.npz"),
        **(extra if reports else {}),
        **kw,
    )
    return pl.read_parquet(out), json.loads(rep.read_text())


def run(files, name, **kw):
    """The whole selection on two parts, with the cut in ``kw``."""
    emb_kw = {k: kw.pop(k) for k in ("backend", "svd_dim") if k in kw}
    tag = "emb-" + "-".join(f"{k}{v}" for k, v in sorted(emb_kw.items()))
    return cut(embed(files, 2, name=tag, **emb_kw), name, **kw)


def test_tfidf_svd_embeddings_are_normalised_and_deterministic(domain, tmp_path):
    texts = [d["text"] for d in domain[:40]] + ["猫は哺乳類である。", "The cat sat on the mat."]
    a = get_embedder("tfidf-svd", svd_dim=16, seed=1).fit_encode(texts)
    b = get_embedder("tfidf-svd", svd_dim=16, seed=1)
    b_emb = b.fit(texts).encode(texts)
    assert a.dtype == np.float32 and a.shape == (42, 16)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.allclose(a, b_emb, atol=1e-5)
    # A text's vector does not depend on the batch it is encoded in.
    assert np.array_equal(b.encode(texts[5:9]), b_emb[5:9])
    with pytest.raises(PipelineError, match="corpus.select.backend"):
        get_embedder("word2vec")


def test_tfidf_svd_state_round_trips_without_pickle(domain, tmp_path):
    from sklearn.feature_extraction.text import TfidfTransformer

    texts = [d["text"] for d in domain[:40]]
    emb = get_embedder("tfidf-svd", svd_dim=16, seed=1).fit(texts)
    save_embedder(emb, tmp_path / "state.npz")
    with np.load(tmp_path / "state.npz", allow_pickle=False) as z:  # plain arrays only
        assert {"columns", "idf", "components"} <= set(z.files)
        assert str(z["backend"]) == "tfidf-svd"
    back = load_embedder(tmp_path / "state.npz")
    assert np.array_equal(back.encode(texts), emb.encode(texts))
    # The hand-written projection is sklearn's sublinear TF-IDF followed by the SVD.
    x = emb._hash(texts)[:, emb.columns]
    tfidf = TfidfTransformer(sublinear_tf=True).fit(x)
    tfidf.idf_ = emb.idf.astype(np.float64)
    z = tfidf.transform(x) @ emb.components.T
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    assert np.allclose(back.encode(texts), z, atol=1e-5)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"bad\.npz: not an embedder state"):
        load_embedder(tmp_path / "bad.npz")


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
    assert report["backend"] == "tfidf-svd" and report["dim"] == 32 and report["n_parts"] == 2
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
    assert top.height == 4 and report["method"] == "top_k" and report["topk"] == 3
    assert set(top["source"]) <= {"fin", "held"}


def test_centroid_and_topk_mean_both_rank_the_domain_first(files):
    emb = embed(files, 2, name="emb-scores")
    every = {"method": "threshold", "value": -1.0}
    centroid, _ = cut(emb, "c", score="centroid", **every)
    top1, _ = cut(emb, "t1", score="topk_mean", topk=1, **every)
    top5, _ = cut(emb, "t5", score="topk_mean", topk=5, **every)
    for table in (centroid, top1, top5):
        head = set(table["source"].head(4))
        assert head <= {"fin", "held"} and "held" in head, table.head(6)
    # topk_mean with k=1 is the cosine to the nearest seed; more seeds average it down.
    docs = np.concatenate([np.load(emb / f"{p}.npy") for p in part_names(2)])
    seeds = np.load(emb / "seeds.npy")
    ids = pl.concat([pl.read_parquet(emb / f"{p}.ids.parquet") for p in part_names(2)])["id"]
    nearest = dict(zip(ids, (docs @ seeds.T).max(axis=1), strict=True))
    assert all(abs(nearest[i] - s) < 1e-5 for i, s in top1.select("id", "score").iter_rows())
    t5 = dict(top5.select("id", "score").iter_rows())
    assert all(t5[i] <= s + 1e-6 for i, s in top1.select("id", "score").iter_rows())
    assert not np.allclose(centroid.sort("id")["score"], top5.sort("id")["score"])


def test_the_selection_does_not_depend_on_the_number_of_parts(files):
    one = embed(files, 1)
    tables = {}
    for n in (1, 3, 7):
        emb = embed(files, n)
        assert len(list(emb.glob("*-of-*.npy"))) == n
        tables[n], report = cut(emb, "sel", n_parts=n, method="quantile", value=0.3)
        assert report["n_parts"] == n
    assert tables[1].equals(tables[3]) and tables[1].equals(tables[7])
    whole = np.load(one / "000-of-001.npy")
    split = np.concatenate([np.load(embed(files, 3) / f"{p}.npy") for p in part_names(3)])
    assert np.array_equal(whole, split)


def _digest(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.glob("*"))
        if p.suffix in (".npy", ".npz") or p.name.endswith(".ids.parquet")
    }


def test_a_new_cut_reranks_the_cached_embeddings(files):
    emb = embed(files, 2, name="emb-cache")
    before = _digest(emb)
    loose, _ = cut(emb, "loose", method="quantile", value=0.4)
    tight, _ = cut(emb, "tight", method="quantile", value=0.8)
    top, _ = cut(emb, "top", method="top_k", value=5)
    assert _digest(emb) == before  # nothing re-embedded or rewritten
    assert set(top["id"]) <= set(tight["id"]) < set(loose["id"])
    assert tight.height < loose.height


def test_stale_or_mismatched_embeddings_are_refused(files, tmp_path):
    import shutil

    emb = tmp_path / "emb"
    shutil.copytree(embed(files, 2, name="emb-stale"), emb)

    def select(parts: list[str]) -> None:
        select_domain(
            str(files / "clean.parquet"),
            str(emb / "seeds.npy"),
            [str(emb / f"{p}.npy") for p in parts],
            [str(emb / f"{p}.ids.parquet") for p in parts],
            str(tmp_path / "o.parquet"),
            str(tmp_path / "o.json"),
        )

    ids = pl.read_parquet(emb / "001-of-002.ids.parquet")
    ids.reverse().write_parquet(emb / "001-of-002.ids.parquet")
    with pytest.raises(DataError, match=r"001-of-002\.ids\.parquet: ids differ .* stale"):
        select(part_names(2))
    with pytest.raises(DataError, match=r"the embedding parts cover"):
        select(["000-of-002"])
    np.save(emb / "seeds.npy", np.ones((3, 5), dtype=np.float32))
    with pytest.raises(DataError, match=r"dimension 32, but the seeds'"):
        select(part_names(2))
    assert not (tmp_path / "o.parquet").exists()


def test_histogram_and_report_are_written(files):
    emb = embed(files, 2, name="emb-report")
    selected, report = cut(emb, "rep", reports=True, method="quantile", value=0.5)
    png = (emb / "rep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = (emb / "rep.md").read_text(encoding="utf-8")
    for section in ("## Top kept", "## Bottom kept", "## Top dropped", "## Bottom dropped"):
        assert section in md
    assert "![score histogram](rep.png)" in md
    assert f"threshold {report['threshold']:.4f}" in md
    best = selected.row(0, named=True)
    top_rows = md.split("## Top kept")[1].split("## Bottom kept")[0]
    first = next(line for line in top_rows.splitlines() if line.startswith("| 1 |"))
    assert f"{best['score']:.4f}" in first and best["id"] in first
    assert " ".join(best["text"][:120].split()) in first.replace("\\|", "|")
    # Ten rows per section (the corpus has 94 documents), each table row one line.
    assert top_rows.count("\n| ") == 10 + 1
    worst_kept = selected.row(-1, named=True)
    bottom = md.split("## Bottom kept")[1].split("## Top dropped")[0]
    assert worst_kept["id"] in next(ln for ln in bottom.splitlines() if ln.startswith("| 1 |"))


def test_cuts_that_keep_nothing_or_bad_values_name_the_key(files):
    with pytest.raises(PipelineError, match=r"corpus\.select\.value.*keeps no document"):
        run(files, "none", backend="tfidf-svd", svd_dim=8, method="threshold", value=0.9999)
    with pytest.raises(PipelineError, match=r"corpus\.select\.value"):
        run(files, "badq", backend="tfidf-svd", svd_dim=8, method="quantile", value=1.5)
    with pytest.raises(PipelineError, match=r"corpus\.select\.value"):
        cut_threshold(np.array([0.1, 0.2]), "top_k", 2.5)
    assert not (files / "emb-backendtfidf-svd-svd_dim8" / "none.parquet").exists()


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


def test_sentence_transformers_batches_are_sorted_by_length():
    import torch

    torch.set_num_threads(1)
    emb = get_embedder("sentence-transformers", model=None, batch_size=2)
    seen = []
    real = emb.model.encode

    def spy(texts, **kw):
        seen.append(list(texts))
        return real(texts, **kw)

    emb.model.encode = spy
    texts = ["a much longer sentence than the others here", "short", "mid length one", "x"]
    out = emb.encode(texts)
    lengths = [len(t) for t in seen[0]]
    assert lengths == sorted(lengths) and sorted(seen[0]) == sorted(texts)
    emb.model.encode = real
    assert np.allclose(out, emb.encode(texts[:1] + texts[1:]), atol=1e-5)
    assert np.allclose(out[1], emb.encode(["short"])[0], atol=1e-4)
