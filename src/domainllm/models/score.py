"""Score one base-model candidate on what matters for the domain model.

Three views, comparable across tokenizers: how efficiently the tokenizer
encodes domain text (characters per token), how well the model predicts
held-out domain text (bits per character), and Japanese commonsense
multiple choice by log-likelihood (JCommonsenseQA accuracy).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from domainllm.errors import DataError
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
    """Characters and UTF-8 bytes per token and the share of unknown tokens over ``texts``."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n_tokens = sum(len(ids) for ids in encoded)
    unk = tokenizer.unk_token_id
    n_unk = sum(ids.count(unk) for ids in encoded) if unk is not None else 0
    chars = sum(len(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "chars_per_token": chars / max(n_tokens, 1),
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "unk_rate": n_unk / max(n_tokens, 1),
        "domain_tokens": n_tokens,
        "domain_chars": chars,
    }


def score_base(
    model_dir: str,
    output: str,
    *,
    domain_texts: str,
    jcqa: str,
    jcqa_max_items: int,
    ppl_seq_len: int,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    batch_size: int = 16,
    threads: int | None = None,
) -> dict:
    """Write the candidate's scores as JSON (flat: one key per metric) and return them.

    Args:
        model_dir: the candidate folder (its name is the candidate's name).
        output: the JSON file to write.
        domain_texts: Parquet with a ``text`` column of held-out domain documents.
        jcqa: JCommonsenseQA JSONL file.
        jcqa_max_items: the first N items are evaluated.
        ppl_seq_len: window length for bits per character.
        trust_remote_code, allow_pickle: passed to the loader.
        batch_size: sequences per forward pass.
        threads: torch CPU threads (the job's share of cores); None keeps torch's default.
    """
    from domainllm.evaluate.likelihood import domain_bits_per_char, load_jcqa, mcqa_accuracy
    from domainllm.models.loading import load_for_inference, set_threads

    set_threads(threads)
    start = time.time()
    texts = read_texts(domain_texts)
    items = load_jcqa(jcqa, jcqa_max_items)
    model, tokenizer = load_for_inference(
        model_dir, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    name = Path(model_dir).name
    eff = tokenizer_efficiency(tokenizer, texts)
    log.info(
        "%s: %.3f chars/token on %d domain documents", name, eff["chars_per_token"], len(texts)
    )
    bpc = domain_bits_per_char(model, tokenizer, texts, ppl_seq_len, batch_size=batch_size)
    log.info("%s: %.4f bits/char, perplexity %.2f", name, bpc["bits_per_char"], bpc["perplexity"])
    mc = mcqa_accuracy(model, tokenizer, items, batch_size=batch_size)
    log.info(
        "%s: JCommonsenseQA acc %.3f acc_norm %.3f (n=%d)", name, mc["acc"], mc["acc_norm"], mc["n"]
    )
    scores = {
        "candidate": name,
        "model_dir": str(model_dir),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        **eff,
        "domain_bits_per_char": bpc["bits_per_char"],
        "domain_perplexity": bpc["perplexity"],
        "domain_eval_tokens": bpc["tokens"],
        "jcqa_acc": mc["acc"],
        "jcqa_acc_norm": mc["acc_norm"],
        "jcqa_n": mc["n"],
        "ppl_seq_len": ppl_seq_len,
        "seconds": round(time.time() - start, 2),
    }
    write_json(scores, output)
    return scores
