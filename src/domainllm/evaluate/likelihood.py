"""Log-likelihood evaluation: multiple-choice accuracy and bits per character.

Both work for any causal LM and tokenizer, so models with different
vocabularies can be compared: multiple choice asks which continuation the model
finds most likely (as lm-evaluation-harness does), and bits per character
divides the cross-entropy by the number of characters rather than tokens.

A multiple-choice item is ``{"question", "choices", "label"}`` (scored after
:data:`JCQA_PROMPT`) or ``{"context", "choices", "label"}`` with its prompt
already filled in (task files, :mod:`domainllm.models.tasks`); an optional
``"delimiter"`` goes between the context and every choice (lm-evaluation-harness's
``target_delimiter``, "" by default here).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from domainllm.errors import DataError

log = logging.getLogger(__name__)

JCQA_PROMPT = "質問:{question}\n答え:"


def load_jcqa(path: str | os.PathLike, max_items: int | None = None) -> list[dict]:
    """Read JCommonsenseQA items (JSON Lines, or one JSON array) into dicts.

    Args:
        path: file with objects holding ``question``, ``choice0``..``choiceN`` and ``label``.
        max_items: keep the first N items (None keeps all).

    Returns:
        ``[{"id", "question", "choices": [...], "label": int}, ...]``.

    Raises:
        DataError: naming the file and line of an item with a missing field, an
            empty choice list or a label outside the choices.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: JCommonsenseQA file not found")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    else:
        from domainllm.io import read_jsonl

        rows = list(read_jsonl(p))
    items = []
    for where, obj in rows:
        if max_items is not None and len(items) >= max_items:
            break
        if not isinstance(obj, dict) or "question" not in obj or "label" not in obj:
            raise DataError(f"{p}:{where}: item needs 'question', 'choice0'.. and 'label'")
        choices = []
        while f"choice{len(choices)}" in obj:
            choices.append(str(obj[f"choice{len(choices)}"]))
        if len(choices) < 2:
            raise DataError(f"{p}:{where}: item has fewer than two choices (choice0, choice1, ...)")
        try:
            label = int(obj["label"])
        except (TypeError, ValueError) as e:
            raise DataError(f"{p}:{where}: label {obj['label']!r} is not an integer") from e
        if not 0 <= label < len(choices):
            raise DataError(f"{p}:{where}: label {label} outside 0..{len(choices) - 1}")
        items.append(
            {
                "id": obj.get("q_id", where),
                "question": str(obj["question"]),
                "choices": choices,
                "label": label,
            }
        )
    if not items:
        raise DataError(f"{p}: no JCommonsenseQA items")
    return items


def _device(model):
    return next(model.parameters()).device


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, split as lm-evaluation-harness does.

    The whole string is encoded once and the continuation is what follows the
    context's own encoding, so merges across the boundary are scored as the
    model would see them. Trailing context spaces move to the continuation.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    cont = whole[len(ctx) :]
    if not cont:
        # The continuation merged into the context's last token: score that token.
        ctx, cont = whole[:-1], whole[-1:]
    return ctx, cont


def continuation_logliks(
    model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16, desc: str = "loglik"
) -> list[float]:
    """Sum of log-probabilities of each continuation given its context.

    Args:
        pairs: ``(context, continuation)`` strings.

    Returns:
        One float (natural log) per pair, in the input order.
    """
    import torch
    from tqdm.auto import tqdm

    device = _device(model)
    max_len = getattr(model.config, "max_position_embeddings", None) or 2048
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    reqs = []
    for i, (context, continuation) in enumerate(pairs):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        # The model reads context + continuation minus its last token; keep the
        # rightmost max_len tokens (the continuation must stay whole).
        inp = (ctx + cont)[:-1][-max_len:]
        reqs.append((i, inp, cont))
    # Longest first: padding waste is small and a too-large batch fails at once.
    reqs.sort(key=lambda r: -len(r[1]))
    out = [0.0] * len(pairs)
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(reqs), batch_size), desc=desc, unit="batch", mininterval=2.0
        ):
            batch = reqs[start : start + batch_size]
            width = max(len(r[1]) for r in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, (_, inp, _) in enumerate(batch):
                ids[j, : len(inp)] = torch.tensor(inp)
                mask[j, : len(inp)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for j, (i, inp, cont) in enumerate(batch):
                # Positions len(inp)-n .. len(inp)-1 predict the continuation tokens
                # (a continuation longer than the window keeps its scoreable tail).
                n = min(len(cont), len(inp))
                sl = logits[j, len(inp) - n : len(inp)].float().log_softmax(-1)
                target = torch.tensor(cont[len(cont) - n :], device=sl.device).unsqueeze(-1)
                out[i] = float(sl.gather(-1, target).sum())
    return out


def item_context(item: dict) -> str:
    """The text every choice of ``item`` continues: its ``context``, or the JCQA prompt."""
    if "context" in item:
        return item["context"]
    return JCQA_PROMPT.format(question=item["question"])


def choice_logliks(model, tokenizer, items: list[dict], batch_size: int = 16) -> list[list[float]]:
    """Log-likelihood of every choice of every item, as ``[[ll_choice0, ...], ...]``."""
    pairs = [
        (item_context(item), item.get("delimiter", "") + choice)
        for item in items
        for choice in item["choices"]
    ]
    flat = continuation_logliks(model, tokenizer, pairs, batch_size, desc="mcqa")
    out, k = [], 0
    for item in items:
        out.append(flat[k : k + len(item["choices"])])
        k += len(item["choices"])
    return out


def _argmax(values: list[float]) -> int:
    # First maximum wins, as numpy.argmax does.
    return max(range(len(values)), key=lambda i: (values[i], -i))


def mcqa_item_results(model, tokenizer, items: list[dict], batch_size: int = 16) -> list[dict]:
    """Per-item multiple-choice results: the predicted choice under each rule, and correctness.

    Each choice is scored as the continuation of the item's context
    (:func:`item_context`: ``質問:{question}\\n答え:`` for JCQA items).
    ``pred`` takes the choice with the highest log-likelihood; ``pred_norm`` the
    highest log-likelihood per character of the choice and ``pred_bytes`` per
    UTF-8 byte (lm-evaluation-harness's acc, acc_norm and acc_bytes: the lengths
    are the choice's own, without the delimiter).

    Returns:
        ``[{"id", "label", "pred", "pred_norm", "pred_bytes", "correct",
        "correct_norm", "correct_bytes"}, ...]`` in item order.
    """
    if not items:
        raise DataError("mcqa: no items")
    lls = choice_logliks(model, tokenizer, items, batch_size)
    out = []
    for i, (item, ll) in enumerate(zip(items, lls, strict=True)):
        chars = [max(1, len(c)) for c in item["choices"]]
        nbytes = [max(1, len(c.encode("utf-8"))) for c in item["choices"]]
        preds = {
            "pred": _argmax(ll),
            "pred_norm": _argmax([x / n for x, n in zip(ll, chars, strict=True)]),
            "pred_bytes": _argmax([x / n for x, n in zip(ll, nbytes, strict=True)]),
        }
        row = {"id": item.get("id", i), "label": item["label"], **preds}
        for key, pred in preds.items():
            row[key.replace("pred", "correct")] = int(pred == item["label"])
        out.append(row)
    return out


def mcqa_accuracy(model, tokenizer, items: list[dict], batch_size: int = 16) -> dict:
    """Log-likelihood multiple-choice accuracy, as lm-evaluation-harness defines it.

    ``acc``, ``acc_norm`` (per character) and ``acc_bytes`` (per UTF-8 byte) are
    the means of ``mcqa_item_results``' correctness columns.

    Returns:
        ``{"acc": float, "acc_norm": float, "acc_bytes": float, "n": int}``.
    """
    rows = mcqa_item_results(model, tokenizer, items, batch_size)
    n = len(rows)
    return {
        "acc": sum(r["correct"] for r in rows) / n,
        "acc_norm": sum(r["correct_norm"] for r in rows) / n,
        "acc_bytes": sum(r["correct_bytes"] for r in rows) / n,
        "n": n,
    }


def sliding_windows(
    seq: list[int], seq_len: int, stride: int
) -> list[tuple[list[int], list[int], int]]:
    """Cut a token sequence into windows that score every token after the first once.

    The perplexity of fixed-length models, as the Hugging Face guide and
    lm-evaluation-harness's rolling log-likelihood compute it: windows of up to
    ``seq_len`` inputs start every ``stride`` tokens, and each window scores only
    the tokens no earlier window scored, so every token is predicted once with
    up to ``seq_len`` tokens of context (at least ``seq_len - stride`` after the
    first window). ``stride == seq_len`` gives disjoint windows.

    Returns:
        ``[(inputs, targets, n_skip), ...]``: ``targets[i]`` is the token after
        ``inputs[i]``; the first ``n_skip`` targets were scored by an earlier window.
    """
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in 1..seq_len ({seq_len}), got {stride}")
    out = []
    last = len(seq) - 1  # index of the last target
    scored = 0  # targets seq[1..scored] are done
    begin = 0
    while scored < last:
        end = min(begin + seq_len, last)  # targets seq[begin+1 .. end]
        out.append((seq[begin:end], seq[begin + 1 : end + 1], scored - begin))
        scored = end
        begin += stride
    return out


def domain_bits_per_char(
    model,
    tokenizer,
    texts: list[str],
    seq_len: int,
    batch_size: int = 16,
    stride: int | None = None,
) -> dict:
    """Cross-entropy of ``texts`` in bits per character, and token-level perplexity.

    Each text is tokenised with ``<s>`` in front (when the tokenizer has one) and
    scored with a sliding window (:func:`sliding_windows`): every token after
    the first is predicted exactly once, with up to ``seq_len`` tokens of
    context from its own document.

    Args:
        seq_len: window length (the most context a token gets).
        stride: tokens between window starts, 1..seq_len; None (or ``seq_len``)
            gives disjoint windows. Smaller strides give every token more
            context at ``seq_len / stride`` times the compute.

    Returns:
        ``{"bits_per_char", "perplexity", "tokens" (predicted), "chars",
        "windows", "stride"}``.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in 1..seq_len ({seq_len}), got {stride}")
    texts = [t for t in texts if t]
    if not texts:
        raise DataError("domain_bits_per_char: no non-empty texts")
    device = _device(model)
    bos = tokenizer.bos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    windows: list[tuple[list[int], list[int], int]] = []
    # Special-token strings in the text are text (as the shards encode them).
    encoded = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    for ids in encoded:
        seq = ([bos] if bos is not None else []) + list(ids)
        windows.extend(sliding_windows(seq, seq_len, stride))
    # Longest first: little padding, and a too-large batch fails at once.
    windows.sort(key=lambda w: -len(w[0]))
    total_nll = 0.0
    total_tokens = 0
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(windows), batch_size), desc="bits/char", unit="batch", mininterval=2.0
        ):
            batch = windows[start : start + batch_size]
            width = max(len(w[0]) for w in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, (inp, tgt, skip) in enumerate(batch):
                ids[j, : len(inp)] = torch.tensor(inp)
                mask[j, : len(inp)] = 1
                labels[j, skip : len(tgt)] = torch.tensor(tgt[skip:])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            labels = labels.to(logits.device)
            total_nll += float(
                F.cross_entropy(
                    logits.float().flatten(0, 1),
                    labels.flatten(),
                    ignore_index=-100,
                    reduction="sum",
                )
            )
            total_tokens += int((labels != -100).sum())
    if not total_tokens:
        raise DataError("domain_bits_per_char: the texts give no token to predict")
    chars = sum(len(t) for t in texts)
    return {
        "bits_per_char": total_nll / math.log(2) / chars,
        "perplexity": math.exp(total_nll / total_tokens),
        "tokens": total_tokens,
        "chars": chars,
        "windows": len(windows),
        "stride": stride,
    }
