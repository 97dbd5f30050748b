"""Tests of domainllm.corpus.dedup: MinHash signatures, the LSH index, exact digests."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from domainllm.corpus.clean import normalize_text
from domainllm.corpus.dedup import NearDuplicateIndex, shingle_hashes, text_digest
from domainllm.corpus.readers import SourceStats, read_mediawiki

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    """Long paragraphs of real Japanese and English Wikipedia articles."""
    out = []
    for dump in ("wp2txt_testdata_ja.xml.bz2", "wp2txt_testdata_en.xml.bz2"):
        source = {"path": str(SAMPLES / "wiki_dumps" / dump)}
        for doc in itertools.islice(read_mediawiki(source, SourceStats(), "x"), 6):
            out += [p for p in normalize_text(doc.text).split("\n\n") if len(p) > 400][:2]
    return out


def edit(text: str) -> str:
    """A light edit: a few words changed, a clause dropped, punctuation touched."""
    n = len(text)
    return (
        text[: n // 3] + "、また" + text[n // 3 + 12 : 2 * n // 3] + text[2 * n // 3 + 5 :] + "。"
    )


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa = {a[i : i + n] for i in range(len(a) - n + 1)}
    sb = {b[i : i + n] for i in range(len(b) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def test_signatures_are_datasketch_minhashes(paragraphs):
    from datasketch import MinHash

    index = NearDuplicateIndex(num_perm=64, ngram=5, threshold=0.8, seed=7)
    for text in paragraphs[:3]:
        m = MinHash(num_perm=64, seed=7, hashfunc=int, scheme="affine32")
        m.update_batch(shingle_hashes(text, 5).tolist())
        assert np.array_equal(index.signature(text), m.hashvalues)


def test_near_duplicate_of_an_edited_paragraph_is_found(paragraphs):
    index = NearDuplicateIndex(num_perm=128, ngram=5, threshold=0.7, seed=1234)
    for i, text in enumerate(paragraphs):
        assert index.add(f"p{i}", index.signature(text)) is None, "unrelated paragraphs collide"
    for i, text in enumerate(paragraphs):
        copy = edit(text)
        assert copy != text and jaccard(copy, text) > 0.75
        assert index.add(f"copy{i}", index.signature(copy)) == f"p{i}"
    # The estimate follows the true Jaccard similarity.
    a, b = paragraphs[0], edit(paragraphs[0])
    est = np.mean(index.signature(a) == index.signature(b))
    assert est == pytest.approx(jaccard(a, b), abs=0.1)
    unrelated = np.mean(index.signature(paragraphs[0]) == index.signature(paragraphs[1]))
    assert unrelated < 0.2


def test_the_first_of_several_duplicates_is_named(paragraphs):
    index = NearDuplicateIndex(seed=1)
    text = paragraphs[2]
    assert index.add("first", index.signature(text)) is None
    assert index.add("second", index.signature(edit(text))) == "first"
    assert index.add("third", index.signature(text)) == "first"


def test_signatures_do_not_depend_on_the_python_hash_seed(paragraphs):
    text = paragraphs[0]
    code = (
        "import sys; from domainllm.corpus.dedup import NearDuplicateIndex as N;"
        "print(N(seed=5).signature(sys.stdin.read()).tolist())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    assert outs.pop().strip() == str(NearDuplicateIndex(seed=5).signature(text).tolist())


def test_short_texts_and_digests():
    assert len(shingle_hashes("abc", 5)) == 1 and len(shingle_hashes("", 5)) == 0
    assert len(shingle_hashes("abcdefg", 5)) == 3
    assert text_digest("東京") == text_digest("東京") != text_digest("京都")
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicateIndex(threshold=0)
