"""Tests of domainllm.corpus.dedup: MinHash signatures, the LSH index, exact digests."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from domainllm.corpus.clean import normalize_text
from domainllm.corpus.dedup import (
    EXACT,
    NEAR,
    DuplicateFinder,
    MinHasher,
    lsh_params,
    shingle_hashes,
    text_digest,
)
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


def find(texts: list[str], tmp_path, **kw) -> dict[int, tuple[int, int]]:
    """``{row: (reason, first_row)}`` of the duplicates among ``texts`` (rows 0..n-1)."""
    finder = DuplicateFinder(tmp_path, near=kw.pop("near", True), **kw)
    for start in range(0, len(texts), 7):  # several batches, as clean_corpus adds them
        finder.add(list(range(start, min(start + 7, len(texts)))), texts[start : start + 7])
    d = finder.find()
    return {int(r): (int(c), int(f)) for r, c, f in zip(d.rows, d.reason, d.first, strict=True)}


def test_signatures_are_datasketch_minhashes(paragraphs):
    from datasketch import MinHash

    hasher = MinHasher(num_perm=64, ngram=5, seed=7)
    for text in paragraphs[:3]:
        m = MinHash(num_perm=64, seed=7, hashfunc=int, scheme="affine32")
        m.update_batch(shingle_hashes(text, 5).tolist())
        assert np.array_equal(hasher.signature(text), m.hashvalues)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_bands_are_datasketchs_choice(threshold):
    from datasketch.lsh import _optimal_param

    assert lsh_params(threshold, 128) == _optimal_param(threshold, 128, 0.5, 0.5)


def test_near_duplicate_of_an_edited_paragraph_is_found(paragraphs, tmp_path):
    copies = [edit(t) for t in paragraphs]
    for a, b in zip(paragraphs, copies, strict=True):
        assert a != b and jaccard(a, b) > 0.75
    n = len(paragraphs)
    dups = find(paragraphs + copies, tmp_path, threshold=0.7, seed=1234)
    assert dups == {n + i: (NEAR, i) for i in range(n)}, "unrelated paragraphs collide"
    # The estimate follows the true Jaccard similarity.
    hasher = MinHasher(seed=1234)
    a, b = paragraphs[0], copies[0]
    est = np.mean(hasher.signature(a) == hasher.signature(b))
    assert est == pytest.approx(jaccard(a, b), abs=0.1)
    unrelated = np.mean(hasher.signature(paragraphs[0]) == hasher.signature(paragraphs[1]))
    assert unrelated < 0.2


def test_the_first_of_a_group_is_named(paragraphs, tmp_path):
    text = paragraphs[2]
    dups = find([paragraphs[0], text, edit(text), text, paragraphs[1]], tmp_path, seed=1)
    # The exact copy of the group's first is an exact duplicate; the edit a near one.
    assert dups == {2: (NEAR, 1), 3: (EXACT, 1)}
    # An exact copy of a near duplicate points to the document kept.
    dups = find([text, edit(text), edit(text)], tmp_path / "b", seed=1)
    assert dups == {1: (NEAR, 0), 2: (EXACT, 0)}
    # Exact only: the near copy stays.
    dups = find([text, edit(text), text], tmp_path / "c", near=False)
    assert dups == {2: (EXACT, 0)}


def test_candidates_are_verified_and_groups_match_brute_force(paragraphs, tmp_path):
    # One band per signature value: nearly every pair of texts becomes a
    # candidate, so only verification keeps unrelated texts apart.
    texts = paragraphs + [edit(t) for t in paragraphs[::2]] + [edit(edit(paragraphs[0]))]
    hasher = MinHasher(num_perm=128, seed=3)
    sigs = hasher.signatures(texts)
    n = len(texts)
    est = (sigs[:, None, :] == sigs[None, :, :]).mean(axis=2)
    # Brute force: connected components of the pairs at or above the threshold.
    label = list(range(n))
    for i in range(n):
        for j in range(i + 1, n):
            if est[i, j] >= 0.7:
                a, b = label[i], label[j]
                label = [a if x == b else x for x in label]
    expected = {
        j: (NEAR, min(k for k in range(n) if label[k] == label[j]))
        for j in range(n)
        if min(k for k in range(n) if label[k] == label[j]) != j
    }
    assert expected, "the test needs some duplicates"
    assert find(texts, tmp_path, threshold=0.7, seed=3, bands=128) == expected


def test_signatures_do_not_depend_on_the_python_hash_seed(paragraphs):
    text = paragraphs[0]
    code = (
        "import sys; from domainllm.corpus.dedup import MinHasher as M;"
        "print(M(seed=5).signature(sys.stdin.read()).tolist())"
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
    assert outs.pop().strip() == str(MinHasher(seed=5).signature(text).tolist())


def test_short_texts_digests_and_bad_parameters(tmp_path):
    assert len(shingle_hashes("abc", 5)) == 1 and len(shingle_hashes("", 5)) == 0
    assert len(shingle_hashes("abcdefg", 5)) == 3
    assert text_digest("東京") == text_digest("東京") != text_digest("京都")
    with pytest.raises(ValueError, match="threshold"):
        DuplicateFinder(tmp_path, near=True, threshold=0)
    with pytest.raises(ValueError, match="bands"):
        DuplicateFinder(tmp_path, near=True, bands=129)
    # Nothing added: nothing found.
    assert find([], tmp_path / "empty") == {}
