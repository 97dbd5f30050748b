"""Target-domain documents: chABSA-style JSONL split into selection seeds and held-out text.

One JSON object per line, one company report each: ``header.document_id``,
``header.document_name`` and ``sentences[].sentence``. A report becomes one
document (sentences joined with newlines, NFKC-normalised like the corpus). A
seeded shuffle splits the reports into disjoint seed (used to select similar
corpus text) and held-out (never seen by selection or training; used to measure
domain perplexity) sets.
"""

from __future__ import annotations

import logging

from domainllm.corpus.clean import normalize_text
from domainllm.errors import DataError, PipelineError
from domainllm.io import read_jsonl, write_parquet

log = logging.getLogger(__name__)


def read_domain_docs(path: str) -> list[dict]:
    """Read chABSA-style JSONL into ``[{"id", "title", "text"}]`` in file order.

    Reports with no sentence text are skipped (logged).

    Raises:
        DataError: naming the file and line of a missing field or a duplicate id.
    """
    docs: list[dict] = []
    seen: dict[str, int] = {}
    skipped = 0
    for lineno, obj in read_jsonl(path):
        header = obj.get("header")
        if not isinstance(header, dict):
            raise DataError(f"{path}:{lineno}: no 'header' object")
        doc_id = header.get("document_id") or header.get("edi_id")
        if not doc_id:
            raise DataError(f"{path}:{lineno}: no 'header.document_id'")
        doc_id = str(doc_id)
        if doc_id in seen:
            raise DataError(
                f"{path}:{lineno}: duplicate header.document_id '{doc_id}' "
                f"(first on line {seen[doc_id]})"
            )
        seen[doc_id] = lineno
        sentences = obj.get("sentences")
        if not isinstance(sentences, list):
            raise DataError(f"{path}:{lineno}: no 'sentences' list")
        parts = []
        for j, s in enumerate(sentences):
            if not isinstance(s, dict) or not isinstance(s.get("sentence"), str):
                raise DataError(f"{path}:{lineno}: sentences[{j}] has no 'sentence' string")
            if s["sentence"].strip():
                parts.append(s["sentence"].strip())
        if not parts:
            skipped += 1
            continue
        title = header.get("document_name") or doc_id
        # Same normalisation as the cleaned corpus, so that selection compares like
        # with like and domain perplexity is measured on the text form training sees.
        text = normalize_text("\n".join(parts))
        docs.append({"id": doc_id, "title": normalize_text(str(title)), "text": text})
    if skipped:
        log.info("%s: skipped %d reports without sentences", path, skipped)
    return docs


def prepare_domain(
    path: str,
    seed_output: str,
    heldout_output: str,
    *,
    seed_docs: int,
    heldout_docs: int,
    seed: int,
) -> None:
    """Split the domain reports into seed and held-out Parquet tables (id, title, text).

    The reports are sorted by id and shuffled with ``seed``: the first
    ``seed_docs`` become seeds, the next ``heldout_docs`` held-out documents.

    Raises:
        PipelineError: fewer reports than ``seed_docs + heldout_docs``, naming the
            config keys.
    """
    import numpy as np
    import polars as pl

    if seed_docs < 1 or heldout_docs < 1:
        raise PipelineError("config keys data.domain.seed_docs and heldout_docs must be >= 1")
    docs = read_domain_docs(path)
    need = seed_docs + heldout_docs
    if len(docs) < need:
        raise PipelineError(
            f"{path}: {len(docs)} domain documents, but data.domain.seed_docs ({seed_docs}) + "
            f"data.domain.heldout_docs ({heldout_docs}) = {need} are needed"
        )
    docs.sort(key=lambda d: d["id"])
    order = np.random.default_rng(seed).permutation(len(docs))
    picked = [docs[i] for i in order[:need]]
    schema = {"id": pl.String, "title": pl.String, "text": pl.String}
    seeds = pl.DataFrame(picked[:seed_docs], schema=schema)
    heldout = pl.DataFrame(picked[seed_docs:], schema=schema)
    write_parquet(seeds, seed_output)
    write_parquet(heldout, heldout_output)
    log.info(
        "%s: %d reports -> %d seed, %d held-out (%d unused)",
        path,
        len(docs),
        seeds.height,
        heldout.height,
        len(docs) - need,
    )
