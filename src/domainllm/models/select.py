"""Rank the scored base-model candidates and choose the one that feeds training.

Each metric (tokenizer efficiency, domain perplexity, and every task file's
accuracies; :mod:`domainllm.models.metrics`) is turned into a rank (so metrics
on different scales weigh equally), the rank is normalised to [0, 1] (1 =
best), and the weighted sum of normalised ranks is the candidate's score. The
best score wins unless the configuration names a candidate (``base.choose``),
which is recorded as an override.

A candidate whose tokenizer loses more than ``max_lost_char_rate`` of the held-out
domain characters (unknown or dropped; ``lost_char_rate``) cannot win the ranking:
losing characters shortens the token count and hides the hardest text from the
perplexity, so the metrics would reward it.
"""

from __future__ import annotations

import logging
import math

from domainllm.errors import PipelineError
from domainllm.io import read_json, write_json, write_parquet, write_text

log = logging.getLogger(__name__)

INFO_COLUMNS = ["parameters", "vocab_size"]


def normalised_ranks(values: list[float | None], higher_better: bool) -> list[float]:
    """1.0 for the best value, 0.0 for the worst, ties share their mean rank.

    Missing or non-finite values rank last. A single candidate gets 1.0.
    """
    n = len(values)
    if n == 1:
        return [1.0]

    def key(v):
        if v is None or not math.isfinite(v):
            return math.inf
        return -v if higher_better else v

    keys = [key(v) for v in values]
    ordered = sorted(keys)
    ranks = []
    for k in keys:
        first = ordered.index(k)
        last = first + ordered.count(k) - 1
        ranks.append((first + last) / 2)  # 0-based mean rank
    return [1.0 - r / (n - 1) for r in ranks]


def scored_metrics(rows: list[dict], paths: list[str]) -> dict[str, bool]:
    """Rankable metric -> higher is better, from the score files' ``higher_is_better``.

    The candidate metrics come first, then each task's columns in the order the
    score files list them. Score files written before the registry existed fall
    back to :data:`domainllm.models.metrics.CANDIDATE_METRICS`.

    Raises:
        PipelineError: two score files disagree on a metric's direction.
    """
    from domainllm.models.metrics import CANDIDATE_METRICS

    out = {m: hi for m, (hi, _) in CANDIDATE_METRICS.items()}
    fixed = set(out)
    seen: dict[str, str] = {}
    for path, row in zip(paths, rows, strict=True):
        for metric, hi in row.get("higher_is_better", {}).items():
            if metric in seen and out[metric] != bool(hi):
                raise PipelineError(
                    f"{path}: metric '{metric}' is higher-is-better={hi}, "
                    f"but {seen[metric]} says otherwise"
                )
            if metric in fixed and out[metric] != bool(hi):
                raise PipelineError(f"{path}: metric '{metric}' has the wrong direction")
            out[metric] = bool(hi)
            seen[metric] = path
    return out


def select_base(
    scores: list[str],
    table: str,
    table_md: str,
    chosen: str,
    *,
    weights: dict,
    choose: str = "auto",
    max_lost_char_rate: float | None = 0.001,
) -> dict:
    """Write the ranking table (Parquet and Markdown) and chosen.json; return chosen.json's content.

    Every rankable metric is a column with its normalised rank (``rank_<metric>``);
    the weighted metrics make the score.

    Args:
        scores: score JSON files written by ``score_base`` (one per candidate).
        table, table_md, chosen: outputs.
        weights: metric -> weight of its normalised rank (0 ignores it); task
            metrics are ``<task>_acc``, ``<task>_acc_norm``, ...
        choose: ``auto`` or the name of a candidate that wins regardless of rank.
        max_lost_char_rate: candidates above this ``lost_char_rate`` are ineligible
            to win the ranking (None: no limit); an override may still name one.

    Raises:
        PipelineError: no scores, a duplicate candidate, a weight on a metric no
            score file has, a ``choose`` that names no candidate, or (``auto``) no
            eligible candidate.
    """
    import polars as pl

    from domainllm.models.metrics import check_weights

    if not scores:
        raise PipelineError("select_base: no candidate scores")
    rows = [read_json(p) for p in scores]
    for path, row in zip(scores, rows, strict=True):
        if "candidate" not in row or "model_dir" not in row:
            raise PipelineError(f"{path}: score file lacks 'candidate' or 'model_dir'")
    metrics = scored_metrics(rows, scores)
    check_weights(weights, metrics)
    names = [r["candidate"] for r in rows]
    if len(set(names)) != len(names):
        raise PipelineError(f"select_base: duplicate candidates in {scores}")
    if choose != "auto" and choose not in names:
        raise PipelineError(
            f"config key 'base.choose': '{choose}' is not 'auto' or a scored candidate "
            f"({', '.join(names)})"
        )

    lost = [r.get("lost_char_rate") for r in rows]
    eligible = [max_lost_char_rate is None or v is None or v <= max_lost_char_rate for v in lost]
    for name, ok, v in zip(names, eligible, lost, strict=True):
        if not ok:
            log.warning(
                "%s loses %.3g%% of the held-out domain characters (more than "
                "base.selection.max_lost_char_rate %g): it cannot win the ranking",
                name,
                100 * v,
                max_lost_char_rate,
            )
    if choose == "auto" and not any(eligible):
        losses = ", ".join(f"{n} {100 * v:.3g}%" for n, v in zip(names, lost, strict=True))
        raise PipelineError(
            f"config key 'base.selection.max_lost_char_rate': every candidate's tokenizer loses "
            f"more than {max_lost_char_rate:g} of the held-out domain characters ({losses}); "
            "add a candidate that covers the domain's characters, raise the limit, or name "
            "one with base.choose"
        )

    total = [0.0] * len(rows)
    columns: dict[str, list] = {"candidate": names, "model_dir": [r["model_dir"] for r in rows]}
    for metric, higher in metrics.items():
        values = [r.get(metric) for r in rows]
        norm = normalised_ranks(values, higher)
        columns[metric] = [float(v) if v is not None else None for v in values]
        columns[f"rank_{metric}"] = norm
        w = float(weights.get(metric, 0.0))
        total = [t + w * x for t, x in zip(total, norm, strict=True)]
    for col in INFO_COLUMNS:
        columns[col] = [r.get(col) for r in rows]
    columns["score"] = total
    # The first listed candidate wins a tie (the config's order is the tie-break).
    # Ineligible ones only when none is eligible, which only an override gets past.
    pool = [i for i, ok in enumerate(eligible) if ok] or range(len(rows))
    best = max(pool, key=lambda i: (total[i], -i))
    winner = names[best] if choose == "auto" else choose
    columns["eligible"] = eligible
    columns["best_ranked"] = [i == best for i in range(len(rows))]
    columns["chosen"] = [n == winner for n in names]
    df = pl.DataFrame(columns).sort("score", descending=True, maintain_order=True)

    weighted = {m: float(w) for m, w in weights.items() if float(w) > 0}
    max_score = sum(weighted.values())
    weight_text = ", ".join(f"{m} {w:g}" for m, w in weighted.items()) or "none"
    if choose == "auto":
        why = (
            f"Chosen: **{winner}**, the best weighted rank score "
            f"({total[best]:.3f} of {max_score:g}; weights: {weight_text})."
        )
    else:
        why = (
            f"Chosen: **{winner}** by override (config base.choose); the ranking's best was "
            f"{names[best]} ({total[best]:.3f} of {max_score:g}; weights: {weight_text})."
        )
    excluded = [n for n, ok in zip(names, eligible, strict=True) if not ok]
    if excluded:
        why += (
            f" Not eligible to win: {', '.join(excluded)} (lost_char_rate above "
            f"base.selection.max_lost_char_rate {max_lost_char_rate:g})."
        )
    write_parquet(df, table)
    write_text(_markdown(df, metrics, weights) + "\n" + why + "\n", table_md)
    w_row = rows[names.index(winner)]
    result = {
        "name": winner,
        "path": w_row["model_dir"],
        "scores": {
            k: v
            for k, v in w_row.items()
            if k not in ("candidate", "model_dir", "higher_is_better", "timings")
        },
        "override": choose != "auto",
        "best_ranked": names[best],
        "ineligible": [n for n, ok in zip(names, eligible, strict=True) if not ok],
        "score": total[names.index(winner)],
        "weights": weighted,
    }
    write_json(result, chosen)
    log.info(why.replace("**", ""))
    return result


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _markdown(df, metrics: dict[str, bool], weights: dict) -> str:
    """The ranking (one row per candidate), then every metric (one row per metric)."""
    rows = list(df.iter_rows(named=True))
    cols = ["candidate", "score", "chosen", "eligible", *INFO_COLUMNS]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if c == "candidate" else "---:" for c in cols) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    names = [r["candidate"] for r in rows]
    lines += [
        "",
        "| metric | better | weight | " + " | ".join(names) + " |",
        "|---|:---:|---:|" + "---:|" * len(names),
    ]
    for metric, higher in metrics.items():
        w = float(weights.get(metric, 0.0))
        cells = [_fmt(r[metric]) for r in rows]
        lines.append(f"| {metric} | {'↑' if higher else '↓'} | {w:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
