"""Build a base-model candidate: a tiny Llama trained from scratch, or an existing model.

A *built* candidate gets a byte-level BPE tokenizer trained on the cleaned
corpus (documents of the configured languages only, so tokenizers differ in how
well they cover the domain's language), a LlamaForCausalLM initialised from the
seed, and a brief pre-training on packed sequences of the whole cleaned corpus.
A *source* candidate is an existing model (hub id or local folder) copied into
the candidate folder, so every later stage reads the same kind of folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from domainllm.errors import DataError, PipelineError
from domainllm.io import atomic_path
from domainllm.models.loading import set_threads

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}
# A warm-up share of the steps before the cosine decay (at least one step).
WARMUP_RATIO = 0.1
JA_SCRIPT_RUNS = r"\p{Han}+|\p{Hiragana}+|[\p{Katakana}ー]+"
# Pre-training windows are drawn from a pool of this many times the tokens consumed.
POOL_FACTOR = 8


def build_base(
    output: str,
    *,
    corpus: str | None,
    spec: dict | None,
    source: str | None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    seed: int = 1234,
    threads: int | None = None,
) -> None:
    """Write one base-model candidate folder (model + tokenizer + build.json).

    Args:
        output: the candidate folder, written atomically.
        corpus: cleaned corpus Parquet (id, source, title, text, lang); needed with ``spec``.
        spec: a ``build_spec`` from the config (tokenizer, model, pretrain), or None.
        source: hub id or local folder of an existing model, or None.
        trust_remote_code: passed to the loader for ``source`` models.
        allow_pickle: accept pickled weights for ``source`` models.
        seed: seeds tokenizer sampling, initialisation and batch order.
        threads: torch CPU threads (the job's share of cores); None keeps torch's default.

    Raises:
        PipelineError: unless exactly one of ``spec`` and ``source`` is given.
        DataError: the corpus is missing columns or has no documents of the
            tokenizer's languages; the source model cannot be loaded.
    """
    if (spec is None) == (source is None):
        raise PipelineError(
            f"{output}: a base candidate needs exactly one of 'build' and 'source' "
            f"(got build={spec is not None}, source={source!r})"
        )
    set_threads(threads)
    if source is not None:
        _copy_source(output, source, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        return
    if corpus is None:
        raise PipelineError(f"{output}: a built candidate needs the cleaned corpus")
    _build_tiny(output, corpus=corpus, spec=spec, seed=seed)


def _copy_source(output: str, source: str, *, trust_remote_code: bool, allow_pickle: bool) -> None:
    from domainllm.models.loading import load_causal_lm

    start = time.time()
    # dtype "auto" keeps the checkpoint's own precision (bf16 stays bf16).
    model, tokenizer = load_causal_lm(
        source, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, dtype="auto"
    )
    if getattr(tokenizer, "chat_template", None) is None:
        from domainllm.train.chat import CHAT_TEMPLATE

        tokenizer.chat_template = CHAT_TEMPLATE
    with atomic_path(output, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "source": source,
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.time() - start, 2),
        }
        (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info("copied %s into %s", source, output)


def read_corpus(path: str):
    """Read the cleaned corpus, checking the columns the build needs."""
    import polars as pl

    if not Path(path).is_file():
        raise DataError(f"{path}: cleaned corpus not found")
    df = pl.read_parquet(path)
    missing = {"text", "lang"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return df


def train_tokenizer(texts: list[str], vocab_size: int, *, model_max_length: int = 512):
    """Train a byte-level BPE tokenizer and wrap it for transformers.

    The tokenizer prepends ``<s>`` like Llama's and carries the pipeline's chat
    template. Byte-level BPE never needs ``<unk>``; the token exists for
    interface parity with real tokenizers.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from domainllm.train.chat import CHAT_TEMPLATE

    specials = list(SPECIAL_TOKENS.values())  # ids 0..3: <unk> <s> </s> <pad>
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    # Runs of one Japanese script (kanji, hiragana, katakana) are split apart before
    # the byte-level split: merges rarely cross scripts anyway, and the shorter
    # "words" make training several times faster on Japanese text.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(JA_SCRIPT_RUNS), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, **SPECIAL_TOKENS
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def _sample(texts: list[str], n: int, seed: int) -> list[str]:
    """Up to ``n`` texts drawn without replacement, in a seed-determined order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(texts))[:n]
    return [texts[i] for i in idx]


def pack_tokens(tokenizer, texts: list[str], n_tokens: int, seed: int, chunk_docs: int = 256):
    """Token ids of shuffled documents, each ``<s> ... </s>``, until ``n_tokens`` are reached.

    Documents are tokenised lazily in shuffled order, so a large corpus costs
    only what is needed; a small one is cycled (reshuffled each pass).

    Returns:
        (1-D int64 numpy array of at least ``n_tokens`` ids, documents used).
    """
    import numpy as np

    eos = tokenizer.eos_token_id
    parts: list[np.ndarray] = []
    have = docs = epoch = 0
    while have < n_tokens:
        order = _sample(texts, len(texts), seed + epoch)
        for start in range(0, len(order), chunk_docs):
            batch = order[start : start + chunk_docs]
            encoded = tokenizer(batch, add_special_tokens=True, split_special_tokens=True)
            for ids in encoded["input_ids"]:
                parts.append(np.asarray(ids + [eos], dtype=np.int64))
                have += len(ids) + 1
                docs += 1
            if have >= n_tokens:
                break
        epoch += 1
    return np.concatenate(parts), docs


def sample_sequences(tokens, n_seqs: int, seq_len: int, seed: int):
    """``n_seqs`` random non-overlapping windows of ``seq_len`` from a packed token stream.

    Random windows mix many documents into every batch; consecutive windows of
    one long article would make the loss jump from batch to batch.
    """
    import numpy as np

    n_windows = len(tokens) // seq_len
    windows = tokens[: n_windows * seq_len].reshape(n_windows, seq_len)
    rng = np.random.default_rng(seed)
    pick = rng.choice(n_windows, size=n_seqs, replace=n_windows < n_seqs)
    return windows[pick]


def _build_tiny(output: str, *, corpus: str, spec: dict, seed: int) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

    start = time.time()
    tok_spec, model_spec, pt = spec["tokenizer"], spec["model"], spec["pretrain"]
    df = read_corpus(corpus)
    langs = list(tok_spec["langs"])
    tok_texts = df.filter(df["lang"].is_in(langs))["text"].to_list()
    if not tok_texts:
        raise DataError(f"{corpus}: no documents with lang in {langs} to train the tokenizer on")
    tok_texts = _sample(tok_texts, tok_spec.get("max_docs", 5000), seed)
    max_pos = model_spec.get("max_position_embeddings", 512)
    if pt["seq_len"] > max_pos:
        raise PipelineError(
            f"build spec: pretrain.seq_len {pt['seq_len']} exceeds "
            f"model.max_position_embeddings {max_pos}"
        )
    if model_spec["hidden_size"] % model_spec["num_heads"]:
        raise PipelineError(
            f"build spec: model.hidden_size {model_spec['hidden_size']} is not divisible by "
            f"model.num_heads {model_spec['num_heads']}"
        )
    log.info(
        "training a %d-token BPE tokenizer on %d %s documents",
        tok_spec["vocab_size"],
        len(tok_texts),
        "+".join(langs),
    )
    tokenizer = train_tokenizer(tok_texts, tok_spec["vocab_size"], model_max_length=max_pos)
    log.info("tokenizer: %d tokens (%.1f s)", len(tokenizer), time.time() - start)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_spec["hidden_size"],
        num_hidden_layers=model_spec["num_layers"],
        num_attention_heads=model_spec["num_heads"],
        num_key_value_heads=model_spec["num_heads"],
        intermediate_size=model_spec["intermediate_size"],
        max_position_embeddings=max_pos,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("LlamaForCausalLM with %s parameters", f"{n_params:,}")

    steps, bsz, seq_len = pt["steps"], pt["batch_size"], pt["seq_len"]
    # All cleaned documents (every language, not only the tokenizer's) feed a pool
    # several times larger than the tokens consumed; random windows of it make
    # diverse batches without tokenising a huge corpus.
    n_tokens = steps * bsz * seq_len
    tokens, docs_used = pack_tokens(tokenizer, df["text"].to_list(), POOL_FACTOR * n_tokens, seed)
    seqs = sample_sequences(tokens, steps * bsz, seq_len, seed)
    chunks = torch.from_numpy(seqs.reshape(steps, bsz, seq_len))
    log.info(
        "pre-training %d steps x %d x %d tokens from %d documents", steps, bsz, seq_len, docs_used
    )

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=pt["learning_rate"], betas=(0.9, 0.95), weight_decay=0.1
    )
    warmup = max(1, math.ceil(WARMUP_RATIO * steps))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    model.train()
    losses: list[float] = []
    t_train = time.time()
    bar = tqdm(range(steps), desc="pretrain", unit="step", mininterval=2.0)
    for step in bar:
        batch = chunks[step]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    train_seconds = time.time() - t_train
    model.eval()
    if not all(math.isfinite(x) for x in losses):
        raise PipelineError(
            f"{output}: pre-training diverged (non-finite loss); lower the learning rate"
        )
    tail = max(1, min(10, steps // 10))
    info = {
        "spec": spec,
        "seed": seed,
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "tokenizer_docs": len(tok_texts),
        "pretrain_docs": docs_used,
        "pretrain_pool_tokens": int(len(tokens)),
        "tokens_seen": steps * bsz * seq_len,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        # Single-step losses are noisy; the means over a few steps show the trend.
        "loss_first_mean": sum(losses[:tail]) / tail,
        "loss_last_mean": sum(losses[-tail:]) / tail,
        "losses": [round(x, 4) for x in losses],
        "pretrain_seconds": round(train_seconds, 2),
        "tokens_per_second": round(steps * bsz * seq_len / max(train_seconds, 1e-9), 1),
        "seconds": None,
    }
    with atomic_path(output, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info["seconds"] = round(time.time() - start, 2)
        (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info(
        "built %s: loss %.3f -> %.3f, %s tokens, %.1f s",
        os.path.basename(output),
        info["loss_first_mean"],
        info["loss_last_mean"],
        f"{info['tokens_seen']:,}",
        info["seconds"],
    )
