"""Score one base-model candidate on what matters for the domain model.

Each metric is reported on its own (``docs/selection.md`` defines them):

- tokenizer efficiency on the held-out domain text: characters and UTF-8 bytes
  per token, the share of unknown tokens; and ``corpus_tokens``, the tokens the
  whole selected domain corpus (``results/corpus/selected.parquet``, what
  continued pre-training reads) takes with this tokenizer, counted as the
  shards count them (one eos per document);
- domain perplexity of held-out domain text with a sliding window (every token
  predicted once with up to ``ppl_seq_len`` tokens of context), in bits per
  character (comparable across tokenizers) and per token;
- multiple-choice accuracy by log-likelihood (acc, acc_norm) on every task file
  of ``base.selection.tasks`` (JCommonsenseQA and chABSA sentiment by default).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from domainllm.errors import ConfigError, DataError
from domainllm.io import write_json

log = logging.getLogger(__name__)


def read_texts(path: str, column: str = "text") -> list[str]:
    """The non-empty ``column`` values of a Parquet file."""
    import polars as pl

    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    df = pl.read_parquet(path)
    if column not in df.columns:
        raise DataError(f"{path}: no '{column}' column (columns: {', '.join(df.columns)})")
    texts = [t for t in df[column].to_list() if t]
    if not texts:
        raise DataError(f"{path}: no non-empty '{column}' values")
    return texts


def tokenizer_efficiency(tokenizer, texts: list[str]) -> dict:
    """Characters and UTF-8 bytes per token, unknown tokens and lost characters over ``texts``."""
    # Special-token strings in the text count as text, as the shards encode them.
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    n_tokens = sum(len(ids) for ids in encoded)
    unk = tokenizer.unk_token_id
    n_unk = sum(ids.count(unk) for ids in encoded) if unk is not None else 0
    chars = sum(len(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    lost, visible = lost_characters(tokenizer, texts, encoded)
    return {
        "chars_per_token": chars / max(n_tokens, 1),
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "unk_rate": n_unk / max(n_tokens, 1),
        "lost_char_rate": lost / max(visible, 1),
        "domain_tokens": n_tokens,
        "domain_chars": chars,
    }


def lost_characters(tokenizer, texts: list[str], encoded: list[list[int]]) -> tuple[int, int]:
    """Non-space characters of ``texts`` that decoding their tokens does not give back.

    Counts what the model never sees, whatever the tokenizer does with it: characters
    inside unknown tokens (special tokens are skipped when decoding), and characters
    a tokenizer drops without a trace (transformers' Llama class reads a SentencePiece
    BPE model as if it had byte-fallback pieces; without them, unknown characters
    vanish and ``unk_rate`` stays 0). Both sides are compared as multisets of
    characters, the text after the tokenizer's own normaliser (a fast tokenizer's
    ``backend_tokenizer.normalizer``), so what it normalises (full-width to
    half-width under NFKC, say) is not counted as loss.

    Returns:
        ``(lost, visible)``: lost characters and all non-space characters.
    """
    from collections import Counter

    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)

    def chars(text: str) -> Counter:
        return Counter(c for c in text if not c.isspace())

    lost = visible = 0
    for text, ids in zip(texts, encoded, strict=True):
        ref = chars(normalizer.normalize_str(text) if normalizer is not None else text)
        back = chars(tokenizer.decode(ids, skip_special_tokens=True))
        lost += (ref - back).total()
        visible += ref.total()
    return lost, visible


def corpus_token_count(
    tokenizer, path: str, *, max_docs: int | None = None, seed: int = 0, batch_docs: int = 512
) -> dict:
    """Tokens the whole corpus at ``path`` takes with ``tokenizer``.

    Counted as ``write_shards`` counts them: each text without special tokens,
    plus one eos per document. A corpus of more than ``max_docs`` documents is
    estimated from a seeded sample of ``max_docs`` documents (their tokens per
    character times the corpus's characters), so a large corpus costs a sample.

    Returns:
        ``{"corpus_tokens", "corpus_docs", "corpus_chars", "corpus_tokens_estimated"}``.
    """
    import numpy as np
    import polars as pl

    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    if "text" not in pl.read_parquet_schema(path):
        raise DataError(f"{path}: no 'text' column")
    text = pl.col("text").fill_null("")
    totals = pl.scan_parquet(path).select(
        pl.len().alias("docs"), text.str.len_chars().sum().alias("chars")
    )
    totals = totals.collect().row(0, named=True)
    n_docs, n_chars = int(totals["docs"]), int(totals["chars"] or 0)
    estimated = max_docs is not None and n_docs > max_docs
    frame = pl.scan_parquet(path).select(text)
    if estimated:
        pick = np.sort(np.random.default_rng(seed).choice(n_docs, size=max_docs, replace=False))
        frame = frame.with_row_index("row").filter(pl.col("row").is_in(pick)).select("text")
    texts = frame.collect()["text"].to_list()
    n_tokens = sample_chars = 0
    for start in range(0, len(texts), batch_docs):
        batch = texts[start : start + batch_docs]
        encoded = tokenizer(batch, add_special_tokens=False, split_special_tokens=True)
        n_tokens += sum(len(ids) for ids in encoded["input_ids"])
        sample_chars += sum(len(t) for t in batch)
    if estimated:
        n_tokens = round(n_tokens / max(sample_chars, 1) * n_chars)
    return {
        "corpus_tokens": n_tokens + n_docs,
        "corpus_docs": n_docs,
        "corpus_chars": n_chars,
        "corpus_tokens_estimated": estimated,
    }


def score_base(
    model_dir: str,
    output: str,
    *,
    domain_texts: str,
    corpus: str,
    tasks: list[str],
    ppl_seq_len: int,
    ppl_stride: int | None = None,
    max_items: int | None = None,
    corpus_max_docs: int | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    batch_size: int = 16,
    threads: int | None = None,
) -> dict:
    """Write the candidate's scores as JSON and return them.

    The JSON is flat, one key per metric (``chars_per_token``, ...,
    ``<task>_acc``, ``<task>_acc_norm``), plus ``higher_is_better`` (metric ->
    direction, read by ``select_base``), ``tasks`` (per task: file, data path,
    version, items) and ``timings`` (seconds per metric group).

    Args:
        model_dir: the candidate folder (its name is the candidate's name).
        output: the JSON file to write.
        domain_texts: Parquet with a ``text`` column of held-out domain documents.
        corpus: Parquet with a ``text`` column: the selected domain corpus.
        tasks: multiple-choice task files (:mod:`domainllm.models.tasks`).
        ppl_seq_len: sliding-window length for domain perplexity.
        ppl_stride: tokens between window starts (None: ``ppl_seq_len // 2``).
        max_items: at most this many items per task (None: each task's max_items).
        corpus_max_docs: count the corpus's tokens exactly up to this many documents,
            estimate them from a sample of this many beyond (None: always exact).
        seed: seeds the corpus sample.
        trust_remote_code, allow_pickle: passed to the loader.
        batch_size: sequences per forward pass.
        threads: torch CPU threads (the job's share of cores); None keeps torch's default.

    Raises:
        ConfigError: a bad task file or a stride outside 1..ppl_seq_len.
        DataError: a missing input, a column or a task item that does not fit.
    """
    from domainllm.evaluate.likelihood import domain_bits_per_char, mcqa_accuracy
    from domainllm.models.loading import load_for_inference, set_threads
    from domainllm.models.metrics import CANDIDATE_METRICS, task_columns
    from domainllm.models.tasks import load_tasks, task_items

    stride = ppl_seq_len // 2 if ppl_stride is None else ppl_stride
    if not 1 <= stride <= ppl_seq_len:
        raise ConfigError(
            f"config key 'base.selection.ppl_stride': {stride} is outside 1..ppl_seq_len "
            f"({ppl_seq_len}); a larger stride would leave tokens unscored"
        )
    set_threads(threads)
    start = time.time()
    # Every input is read and checked before the model is loaded.
    texts = read_texts(domain_texts)
    specs = load_tasks(tasks)
    items = {t.name: task_items(t, max_items) for t in specs}
    model, tokenizer = load_for_inference(
        model_dir, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    name = Path(model_dir).name
    timings = {}
    t0 = time.time()
    eff = tokenizer_efficiency(tokenizer, texts)
    eff.update(corpus_token_count(tokenizer, corpus, max_docs=corpus_max_docs, seed=seed))
    timings["tokenizer"] = round(time.time() - t0, 2)
    log.info(
        "%s: %.3f chars/token on %d held-out domain documents; %s tokens (%s) for the "
        "%s-document domain corpus",
        name,
        eff["chars_per_token"],
        len(texts),
        f"{eff['corpus_tokens']:,}",
        "estimated" if eff["corpus_tokens_estimated"] else "exact",
        f"{eff['corpus_docs']:,}",
    )
    t0 = time.time()
    bpc = domain_bits_per_char(
        model, tokenizer, texts, ppl_seq_len, batch_size=batch_size, stride=stride
    )
    timings["perplexity"] = round(time.time() - t0, 2)
    log.info(
        "%s: %.4f bits/char, perplexity %.2f (window %d, stride %d, %d windows)",
        name,
        bpc["bits_per_char"],
        bpc["perplexity"],
        ppl_seq_len,
        stride,
        bpc["windows"],
    )
    higher = {m: hi for m, (hi, _) in CANDIDATE_METRICS.items()}
    task_scores: dict = {}
    task_info: dict = {}
    for spec in specs:
        t0 = time.time()
        mc = mcqa_accuracy(model, tokenizer, items[spec.name], batch_size=batch_size)
        timings[f"task_{spec.name}"] = round(time.time() - t0, 2)
        log.info(
            "%s: %s acc %.3f acc_norm %.3f acc_bytes %.3f (n=%d)",
            name,
            spec.name,
            mc["acc"],
            mc["acc_norm"],
            mc["acc_bytes"],
            mc["n"],
        )
        for metric in spec.metrics:
            task_scores[f"{spec.name}_{metric}"] = mc[metric]
        task_scores[f"{spec.name}_n"] = mc["n"]
        higher.update(task_columns(spec.name, list(spec.metrics)))
        task_info[spec.name] = {
            "file": spec.file,
            "path": spec.path,
            "version": spec.version,
            "n": mc["n"],
            "metrics": list(spec.metrics),
        }
    scores = {
        "candidate": name,
        "model_dir": str(model_dir),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        **eff,
        "domain_bits_per_char": bpc["bits_per_char"],
        "domain_perplexity": bpc["perplexity"],
        "domain_eval_tokens": bpc["tokens"],
        "ppl_seq_len": ppl_seq_len,
        "ppl_stride": stride,
        "ppl_windows": bpc["windows"],
        **task_scores,
        "tasks": task_info,
        "higher_is_better": higher,
        "timings": timings,
        "seconds": round(time.time() - start, 2),
    }
    write_json(scores, output)
    return scores
