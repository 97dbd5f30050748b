"""Validation of evaluators against people: is an evaluator fit to drive decisions?

Every evaluator (trained on feedback or an LLM judge, loaded by name with
:func:`~domainllm.evaluate.feedback.load_evaluator`) is checked on held-out
human judgements it never trained on:

- feedback: the held-out HH-RLHF texts (chosen = good, rejected = bad): AUC (with a
  bootstrap interval over pairs), accuracy at 0.5, expected calibration error, and
  the paired check, the share of pairs whose chosen text scores higher (ties half),
  with a bootstrap interval;
- reference: ELYZA-tasks-100's human-written reference against each model version's
  answer to the same held-out prompt (the reference is the preferred text): the same
  paired share, per version and pooled;
- pairwise (evaluators that compare two texts, the judge): agreement with the
  human preference when asked "is A better than B?" in both orders, and position
  bias (share of pairs whose preference flips with the order; mean P(first text
  better) when shown first and when shown second);
- graded (evaluators that rate similarity, the judge): Spearman correlation with
  JSTS human similarity (0-5), next to sentence chrF as a baseline. The shipped
  data hold no graded human quality scores of generated answers, so the
  quality evaluators get no Spearman check (the report says so).

Items an evaluator gives no score (a judge without a yes/no token) are counted and
left out, and the share scored (coverage) is itself a check. An evaluator is fit to
drive decisions when every check passes the thresholds of config
``evaluate.validation``. Writes results/eval/evaluator_validation.{md,json}.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from domainllm.errors import PipelineError
from domainllm.evaluate.table import bootstrap_interval
from domainllm.io import write_json, write_text

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = {
    "min_auc": 0.65,
    "min_paired_accuracy": 0.6,
    "max_ece": 0.1,
    "min_coverage": 0.9,
    "max_position_flip_rate": 0.3,
}


# ---------------------------------------------------------------- inputs


def _task(row: dict) -> str:
    """The task of a generation: its ``task`` column, else its id's prefix (``elyza/12``)."""
    if row.get("task"):
        return str(row["task"])
    return str(row["id"]).split("/", 1)[0] if "/" in str(row["id"]) else ""


def reference_pairs(
    generations: list[str], tasks: tuple[str, ...] | None = ("elyza",)
) -> tuple[list[dict], dict]:
    """(prompt, reference, output) per version and item from R/generations/<version>.parquet.

    Only items of ``tasks`` count (None: all): ELYZA-tasks-100's references are
    human-written answers, JSQuAD's are extracted spans, not answers to prefer.
    Items without a reference are left out and counted; empty answers stay in (a
    reference should beat them) and are counted.

    Returns:
        (pairs, counts): pairs with version, item_id, prompt, reference, output;
        counts per version of items, items of other tasks, missing references and
        empty outputs.
    """
    from domainllm.infer.generation import read_table

    pairs, counts = [], {}
    for path in generations:
        version = Path(path).name.removesuffix(".parquet")
        df = read_table(path, ("id", "prompt", "reference", "output"), rows="generations")
        c = {
            "items": df.height,
            "other_task": 0,
            "missing_reference": 0,
            "empty_output": 0,
            "pairs": 0,
        }
        for row in df.iter_rows(named=True):
            if tasks is not None and _task(row) not in tasks:
                c["other_task"] += 1
                continue
            ref, out = row["reference"], row["output"]
            if ref is None or not str(ref).strip():
                c["missing_reference"] += 1
                continue
            if out is None or not str(out).strip():
                c["empty_output"] += 1
            pairs.append(
                {
                    "version": version,
                    "item_id": str(row["id"]),
                    "prompt": row["prompt"] or "",
                    "reference": str(ref),
                    "output": "" if out is None else str(out),
                }
            )
            c["pairs"] += 1
        counts[version] = c
    return pairs, counts


# ---------------------------------------------------------------- statistics


def pair_wins(preferred: np.ndarray, other: np.ndarray) -> np.ndarray:
    """1 where the preferred text scores higher, 0.5 on a tie, 0 below; NaN if a score is NaN."""
    a, b = np.asarray(preferred, float), np.asarray(other, float)
    wins = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    wins[np.isnan(a) | np.isnan(b)] = np.nan
    return wins


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC (ties half); NaN when a class is missing."""
    from scipy.stats import rankdata

    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_bootstrap_ci(pair_ids, labels, scores, n_boot: int, seed: int) -> tuple[float, float]:
    """95% interval of the AUC, resampling whole pairs (both texts of a pair together)."""
    pair_ids, labels, scores = np.asarray(pair_ids), np.asarray(labels), np.asarray(scores, float)
    uniq, inverse = np.unique(pair_ids, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), size=len(uniq))
        rows = np.concatenate([members[k] for k in pick])
        aucs.append(_auc(labels[rows], scores[rows]))
    lo, hi = np.nanpercentile(aucs, [2.5, 97.5])
    return float(lo), float(hi)


def paired_summary(wins: np.ndarray, n_boot: int, seed: int) -> dict:
    """Share of pairs the preferred text wins (pairs with both scores), with its interval."""
    wins = np.asarray(wins, float)
    scored = wins[~np.isnan(wins)]
    lo, hi = bootstrap_interval(scored, "mean", n_boot, seed)
    return {
        "paired_accuracy": float(scored.mean()) if len(scored) else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "pairs": int(len(wins)),
        "pairs_scored": int(len(scored)),
    }


def spearman(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> dict:
    """Spearman correlation over the items with a score, with a bootstrap interval."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~np.isnan(x)
    x, y = x[keep], y[keep]
    if len(x) < 3 or len(set(x.tolist())) < 2:
        nan = float("nan")
        return {"spearman": nan, "ci_low": nan, "ci_high": nan, "pairs_scored": int(len(x))}
    rho = float(spearmanr(x, y).statistic)
    xy = np.column_stack([x, y])

    def stat(rows):
        if len(set(rows[:, 0].tolist())) < 2 or len(set(rows[:, 1].tolist())) < 2:
            return float("nan")
        return float(spearmanr(rows[:, 0], rows[:, 1]).statistic)

    rng = np.random.default_rng(seed)
    boots = [stat(xy[rng.integers(0, len(xy), size=len(xy))]) for _ in range(n_boot)]
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return {"spearman": rho, "ci_low": float(lo), "ci_high": float(hi), "pairs_scored": int(len(x))}


# ---------------------------------------------------------------- one evaluator


def _sample_pairs(df, max_pairs: int | None, seed: int):
    """At most ``max_pairs`` whole pairs, drawn with ``seed`` (all when None)."""
    import polars as pl

    ids = sorted(set(df["pair_id"].to_list()))
    if max_pairs is None or len(ids) <= max_pairs:
        return df
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(ids, size=max_pairs, replace=False).tolist())
    return df.filter(pl.col("pair_id").is_in(sorted(keep)))


def _feedback_check(ev, df, n_boot: int, seed: int) -> dict:
    from domainllm.evaluate.feedback import classification_metrics

    scores = np.asarray(ev.score(df["text"].to_list()), dtype=float)
    labels, pair_ids = df["label"].to_numpy(), df["pair_id"].to_numpy()
    scored = ~np.isnan(scores)
    out = {
        "texts": int(len(scores)),
        "texts_scored": int(scored.sum()),
        "coverage": float(scored.mean()) if len(scores) else float("nan"),
    }
    if len(set(labels[scored].tolist())) == 2:
        m = classification_metrics(pair_ids[scored], labels[scored], scores[scored])
        out.update({k: m[k] for k in ("auc", "auc_se", "accuracy", "ece", "brier")})
        out["auc_ci_low"], out["auc_ci_high"] = auc_bootstrap_ci(
            pair_ids[scored], labels[scored], scores[scored], n_boot, seed
        )
    else:
        out.update({k: float("nan") for k in ("auc", "auc_se", "accuracy", "ece", "brier")})
        out["auc_ci_low"] = out["auc_ci_high"] = float("nan")
    good = {int(p): s for p, y, s in zip(pair_ids, labels, scores, strict=True) if y == 1}
    bad = {int(p): s for p, y, s in zip(pair_ids, labels, scores, strict=True) if y == 0}
    common = sorted(set(good) & set(bad))
    wins = pair_wins(np.array([good[k] for k in common]), np.array([bad[k] for k in common]))
    out["paired"] = paired_summary(wins, n_boot, seed)
    return out


def _reference_check(ev, pairs: list[dict], n_boot: int, seed: int) -> dict:
    from domainllm.evaluate.feedback import format_dialogue

    if not pairs:
        return {"pairs": 0, "paired_accuracy": float("nan"), "by_version": {}}
    texts = [format_dialogue(p["prompt"], p["reference"]) for p in pairs]
    texts += [format_dialogue(p["prompt"], p["output"]) for p in pairs]
    scores = np.asarray(ev.score(texts), dtype=float)
    n = len(pairs)
    wins = pair_wins(scores[:n], scores[n:])
    out = paired_summary(wins, n_boot, seed)
    out["coverage"] = float((~np.isnan(scores)).mean())
    versions = sorted({p["version"] for p in pairs})
    out["by_version"] = {
        v: paired_summary(wins[[i for i, p in enumerate(pairs) if p["version"] == v]], n_boot, seed)
        for v in versions
    }
    return out


def _pairwise_check(ev, questions, preferred, other, n_boot: int, seed: int) -> dict:
    """The judge asked "is A better than B?" in both orders, the preferred text first."""
    res = ev.pairwise(questions, preferred, other)
    pref = np.asarray(res["preference"], float)
    wins = np.where(pref > 0.5, 1.0, np.where(pref == 0.5, 0.5, 0.0))
    wins[np.isnan(pref)] = np.nan
    out = paired_summary(wins, n_boot, seed)
    out.update(
        {
            k: res[k]
            for k in (
                "flip_rate",
                "mean_p_when_first",
                "mean_p_when_second",
                "p_yes_mean",
                "pairs_both_orders",
                "no_verdict",
                "prompts",
            )
        }
    )
    out["coverage"] = 1 - res["no_verdict"] / res["prompts"] if res["prompts"] else float("nan")
    return out


def _hh_pairs(df) -> tuple[list[str], list[str], list[str]]:
    """(context, chosen answer, rejected answer) of each complete pair."""
    from domainllm.evaluate.feedback import split_dialogue

    by_pair: dict[int, dict] = {}
    for pid, text, y in zip(df["pair_id"], df["text"], df["label"], strict=True):
        by_pair.setdefault(int(pid), {})[int(y)] = text
    q, good, bad = [], [], []
    for pid in sorted(by_pair):
        d = by_pair[pid]
        if 0 in d and 1 in d:
            ctx_g, ans_g = split_dialogue(d[1])
            _, ans_b = split_dialogue(d[0])
            q.append(ctx_g)
            good.append(ans_g)
            bad.append(ans_b)
    return q, good, bad


def checks_for(result: dict, thresholds: dict) -> list[dict]:
    """Pass/fail of each threshold check that applies to an evaluator's results."""
    t = {**DEFAULT_THRESHOLDS, **{k: v for k, v in thresholds.items() if v is not None}}
    fb = result["feedback"]
    paired, paired_min = fb["paired"]["paired_accuracy"], t["min_paired_accuracy"]
    rows = [
        ("held-out AUC", fb["auc"], ">=", t["min_auc"]),
        ("held-out paired accuracy", paired, ">=", paired_min),
        ("held-out ECE", fb["ece"], "<=", t["max_ece"]),
        ("coverage (held-out texts scored)", fb["coverage"], ">=", t["min_coverage"]),
    ]
    ref = result.get("reference")
    if ref and ref.get("pairs"):
        value = ref["paired_accuracy"]
        rows.append(("reference preferred to model answers", value, ">=", paired_min))
    pw = (result.get("pairwise") or {}).get("feedback")
    if pw:
        rows += [
            ("pairwise agreement (held-out pairs)", pw["paired_accuracy"], ">=", paired_min),
            ("position flip rate", pw["flip_rate"], "<=", t["max_position_flip_rate"]),
            ("pairwise coverage", pw["coverage"], ">=", t["min_coverage"]),
        ]
    out = []
    for name, value, op, threshold in rows:
        measurable = value is not None and math.isfinite(value)
        passed = measurable and (value >= threshold if op == ">=" else value <= threshold)
        out.append(
            {
                "check": name,
                "value": value if measurable else None,
                "op": op,
                "threshold": threshold,
                "passed": bool(passed),
            }
        )
    return out


def validate_evaluator(
    folder: str,
    feedback,
    ref_pairs: list[dict],
    graded: tuple | None,
    *,
    n_boot: int = 1000,
    seed: int = 1234,
    max_pairs: int | None = None,
) -> dict:
    """Every check of one evaluator folder (see the module docstring); no verdict on fitness.

    Args:
        folder: evaluator folder (any registered kind).
        feedback: labelled held-out texts (:func:`domainllm.evaluate.feedback.read_feedback`).
        ref_pairs: :func:`reference_pairs` output.
        graded: (sentence1, sentence2, human score) or None.
        n_boot: bootstrap resamples.
        seed: seeds sampling and the bootstrap.
        max_pairs: for evaluators that abstain (judges, slow): at most this many held-out
            feedback pairs and reference pairs, drawn with ``seed``.
    """
    from domainllm.evaluate.feedback import load_evaluator

    t0 = time.perf_counter()
    ev = load_evaluator(folder)
    costly = getattr(ev, "abstains", False)
    limit = max_pairs if costly else None
    fb = _sample_pairs(feedback, limit, seed)
    refs = ref_pairs
    if limit is not None and len(refs) > limit:
        rng = np.random.default_rng(seed)
        refs = [refs[i] for i in sorted(rng.choice(len(refs), size=limit, replace=False))]
    result = {
        "folder": str(folder),
        "kind": getattr(ev, "kind", type(ev).__name__),
        "feedback": _feedback_check(ev, fb, n_boot, seed),
        "reference": _reference_check(ev, refs, n_boot, seed),
    }
    templates = getattr(ev, "templates", {})
    if "pairwise" in templates:
        q, good, bad = _hh_pairs(fb)
        result["pairwise"] = {"feedback": _pairwise_check(ev, q, good, bad, n_boot, seed)}
        if refs:
            result["pairwise"]["reference"] = _pairwise_check(
                ev,
                [p["prompt"] for p in refs],
                [p["reference"] for p in refs],
                [p["output"] for p in refs],
                n_boot,
                seed,
            )
    if graded is not None and "similarity" in templates:
        s1, s2, y = graded
        verdicts = ev.similarity(s1, s2)
        p = np.array([v.p_yes for v in verdicts], float)
        result["graded"] = {
            "data": "JSTS human similarity (0-5)",
            "pairs": len(y),
            "coverage": float((~np.isnan(p)).mean()),
            **spearman(p, y, n_boot, seed),
        }
    if hasattr(ev, "close"):
        ev.close()
    result["seconds"] = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------- the report


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _ci(d: dict, key: str) -> str:
    return f"{_f(d.get(key))} [{_f(d.get('ci_low'))}, {_f(d.get('ci_high'))}]"


def to_markdown(report: dict) -> str:
    t = report["thresholds"]
    lines = [
        "# Evaluator validation against people",
        "",
        "Is each evaluator fit to drive decisions (model choice, prompt changes, data "
        "filtering)? Checked on held-out human judgements it never trained on; thresholds "
        f"from config `evaluate.validation`: AUC >= {t['min_auc']}, paired accuracy >= "
        f"{t['min_paired_accuracy']}, ECE <= {t['max_ece']}, coverage >= {t['min_coverage']}, "
        f"position flip rate <= {t['max_position_flip_rate']}. Intervals are bootstrap 95% "
        f"({report['n_boot']} resamples, seed {report['seed']}).",
        "",
        "| evaluator | kind | fit to drive decisions | AUC [95% CI] | accuracy | ECE | "
        "paired accuracy [95% CI] | reference preferred [95% CI] | coverage | "
        "pairwise agreement | position flip rate | Spearman (JSTS) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["evaluators"].items():
        fb, ref = r["feedback"], r["reference"]
        pw = (r.get("pairwise") or {}).get("feedback")
        gr = r.get("graded")
        auc = f"{_f(fb['auc'])} [{_f(fb['auc_ci_low'])}, {_f(fb['auc_ci_high'])}]"
        lines.append(
            f"| {name} | {r['kind']} | {'**yes**' if r['fit'] else 'no'} | {auc} | "
            f"{_f(fb['accuracy'])} | {_f(fb['ece'])} | {_ci(fb['paired'], 'paired_accuracy')} | "
            f"{_ci(ref, 'paired_accuracy') if ref.get('pairs') else 'n/a'} | "
            f"{_f(fb['coverage'])} | {_ci(pw, 'paired_accuracy') if pw else 'n/a'} | "
            f"{_f(pw['flip_rate']) if pw else 'n/a'} | "
            f"{_ci(gr, 'spearman') if gr else 'n/a'} |"
        )
    for name, r in report["evaluators"].items():
        lines += ["", f"## {name}", "", f"Folder `{r['folder']}`, kind `{r['kind']}`.", ""]
        failed = [c for c in r["checks"] if not c["passed"]]
        verdict = (
            "**Fit to drive decisions**: every check passes."
            if r["fit"]
            else "**Not fit to drive decisions**: "
            + "; ".join(
                f"{c['check']} {_f(c['value'])} (needs {c['op']} {c['threshold']})" for c in failed
            )
            + "."
        )
        lines += [verdict, "", "| check | value | threshold | passed |", "|---|---|---|---|"]
        for c in r["checks"]:
            lines.append(
                f"| {c['check']} | {_f(c['value'])} | {c['op']} {c['threshold']} | "
                f"{'yes' if c['passed'] else 'no'} |"
            )
        fb = r["feedback"]
        lines += [
            "",
            f"- Held-out feedback: {fb['texts']} texts ({fb['texts_scored']} scored), "
            f"{fb['paired']['pairs']} pairs ({fb['paired']['pairs_scored']} with both scores).",
        ]
        ref = r["reference"]
        if ref.get("pairs"):
            per = ", ".join(
                f"{v} {_ci(d, 'paired_accuracy')} (n={d['pairs_scored']})"
                for v, d in ref["by_version"].items()
            )
            lines.append(
                f"- Reference preferred to the model's answer: {ref['pairs']} pairs, "
                f"{ref['pairs_scored']} with both scores; by version: {per}."
            )
        for where, pw in (r.get("pairwise") or {}).items():
            lines.append(
                f"- Pairwise ({where}): agreement {_ci(pw, 'paired_accuracy')} over "
                f"{pw['pairs_scored']} of {pw['pairs']} pairs; position flip rate "
                f"{_f(pw['flip_rate'])}; mean P(preferred better) shown first "
                f"{_f(pw['mean_p_when_first'])}, shown second {_f(pw['mean_p_when_second'])}; "
                f"mean P(A better) {_f(pw['p_yes_mean'])}; no verdict in {pw['no_verdict']} of "
                f"{pw['prompts']} prompts."
            )
        gr = r.get("graded")
        if gr:
            lines.append(
                f"- Graded ({gr['data']}): Spearman {_ci(gr, 'spearman')} over "
                f"{gr['pairs_scored']} of {gr['pairs']} pairs (coverage {_f(gr['coverage'])})."
            )
        else:
            lines.append(
                "- Graded human scores: none for this kind of evaluator (the shipped data hold no "
                "graded quality scores of generated answers; JSTS similarity grades only apply "
                "to a similarity judge)."
            )
    base = report.get("baselines", {}).get("graded")
    d = report["data"]
    lines += [
        "",
        "## Data",
        "",
        f"- Held-out feedback: `{d['feedback']}` ({d['feedback_texts']} texts, "
        f"{d['feedback_pairs']} pairs; HH-RLHF chosen = 1, rejected = 0).",
        "- Reference pairs (human-written ELYZA-tasks-100 reference vs the model's answer): "
        + ", ".join(
            f"{v}: {c['pairs']} pairs ({c['missing_reference']} without a reference and "
            f"{c['other_task']} of other tasks left out, {c['empty_output']} empty answers kept)"
            for v, c in d["reference"].items()
        )
        + ("." if d["reference"] else "none."),
    ]
    if d.get("graded"):
        lines.append(
            f"- Graded: `{d['graded']}` ({d['graded_pairs']} sentence pairs, human similarity 0-5)"
            + (f"; baseline sentence chrF Spearman {_ci(base, 'spearman')}." if base else ".")
        )
    return "\n".join(lines) + "\n"


def validate_evaluators(
    evaluators: list[str],
    feedback_test: str,
    generations: list[str],
    output_md: str,
    output_json: str,
    *,
    names: list[str] | None = None,
    summary_json: str | None = None,
    graded: str | None = None,
    graded_max_pairs: int | None = 200,
    thresholds: dict | None = None,
    judge_max_pairs: int | None = 50,
    n_boot: int = 1000,
    seed: int = 1234,
) -> dict:
    """Validate every evaluator against people; write the Markdown and JSON reports.

    Args:
        evaluators: evaluator folders (any registered kind).
        feedback_test: held-out labelled feedback (feedback_test.parquet).
        generations: R/generations/<version>.parquet files (ELYZA references vs answers).
        output_md: results/eval/evaluator_validation.md.
        output_json: results/eval/evaluator_validation.json.
        names: evaluator names in the report (default: the folder names).
        summary_json: a flat ``{evaluator: {fit, auc, ...}}`` file of the headline numbers
            (what ``dvc metrics diff`` compares; :func:`summary`).
        graded: JSTS-style JSONL (sentence1, sentence2, label) or None.
        graded_max_pairs: first N graded pairs.
        thresholds: min_auc, min_paired_accuracy, max_ece, min_coverage,
            max_position_flip_rate (missing ones take the defaults).
        judge_max_pairs: held-out and reference pairs a judge is validated on (a subset:
            a judge is slow); trained evaluators see all of them.
        n_boot: bootstrap resamples of every interval.
        seed: seeds subsets and the bootstrap.

    Returns:
        The report written as JSON.
    """
    if not evaluators:
        raise PipelineError("config key 'evaluate': no evaluator to validate")
    names = names or [Path(f).name for f in evaluators]
    if len(names) != len(evaluators) or len(set(names)) != len(names):
        raise PipelineError(f"evaluator names must be unique, one per folder: {names}")
    t = {**DEFAULT_THRESHOLDS, **{k: v for k, v in (thresholds or {}).items() if v is not None}}
    from domainllm.evaluate.feedback import read_feedback

    feedback = read_feedback(feedback_test)
    refs, ref_counts = reference_pairs(generations)
    from domainllm.corpus.embedding_check import read_sts_pairs

    graded_data = read_sts_pairs(graded, graded_max_pairs) if graded else None
    report = {
        "thresholds": t,
        "n_boot": n_boot,
        "seed": seed,
        "evaluators": {},
        "baselines": {},
        "data": {
            "feedback": str(feedback_test),
            "feedback_texts": feedback.height,
            "feedback_pairs": feedback["pair_id"].n_unique(),
            "reference": ref_counts,
            "graded": graded,
            "graded_pairs": len(graded_data[2]) if graded_data else 0,
        },
    }
    if graded_data is not None:
        from domainllm.evaluate.metrics import sentence_chrf

        s1, s2, y = graded_data
        sym = (np.asarray(sentence_chrf(s1, s2)) + np.asarray(sentence_chrf(s2, s1))) / 2
        report["baselines"]["graded"] = {
            "metric": "sentence chrF",
            **spearman(sym, y, n_boot, seed),
        }
    for name, folder in zip(names, evaluators, strict=True):
        log.info("validating evaluator %s (%s)", name, folder)
        r = validate_evaluator(
            folder,
            feedback,
            refs,
            graded_data,
            n_boot=n_boot,
            seed=seed,
            max_pairs=judge_max_pairs,
        )
        r["checks"] = checks_for(r, t)
        r["fit"] = all(c["passed"] for c in r["checks"])
        report["evaluators"][name] = r
        log.info(
            "%s: fit=%s (%s)",
            name,
            r["fit"],
            ", ".join(f"{c['check']}={_f(c['value'])}" for c in r["checks"]),
        )
    markdown = to_markdown(report)
    write_json(_finite(report), output_json)
    if summary_json:
        write_json(_finite(summary(report)), summary_json)
    write_text(markdown, output_md)
    return report


def summary(report: dict) -> dict:
    """The headline numbers per evaluator: fit (1/0), AUC, accuracy, ECE, paired accuracies,
    coverage and, where measured, pairwise agreement, position flip rate and Spearman."""
    out = {}
    for name, r in report["evaluators"].items():
        fb, ref = r["feedback"], r["reference"]
        row = {
            "fit": int(r["fit"]),
            "auc": fb["auc"],
            "accuracy": fb["accuracy"],
            "ece": fb["ece"],
            "paired_accuracy": fb["paired"]["paired_accuracy"],
            "coverage": fb["coverage"],
        }
        if ref.get("pairs"):
            row["reference_paired_accuracy"] = ref["paired_accuracy"]
        pw = (r.get("pairwise") or {}).get("feedback")
        if pw:
            row["pairwise_agreement"] = pw["paired_accuracy"]
            row["position_flip_rate"] = pw["flip_rate"]
        if r.get("graded"):
            row["spearman"] = r["graded"]["spearman"]
        out[name] = row
    return out


def _finite(obj):
    """NaN and infinities as null, so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
