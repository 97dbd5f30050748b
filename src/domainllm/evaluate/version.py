"""Evaluate one model version (the table over all versions: domainllm.evaluate.table).

Per version (base, cpt, sft, sft-gptq) the same metrics, so the table shows what
each stage bought:

- jcqa_acc, jcqa_acc_norm, jcqa_acc_bytes: JCommonsenseQA log-likelihood multiple
  choice (general Japanese), as lm-evaluation-harness defines them.
- domain_bits_per_char, domain_perplexity: cross-entropy on held-out domain text.
- chrf, chrf_sentence_mean, bleu, rouge_l: generated answers against the ELYZA
  references (BLEU and ROUGE-L over MeCab words, or characters: evaluate.metrics.tokenize).
- jsquad_exact_match, jsquad_f1: extractive QA answers against the JSQuAD answers
  (0-100, SQuAD script over characters; when the prompts include JSQuAD).
- evaluator_score: mean P(good) of the answers by the feedback evaluator.
- output_chars_mean, output_tokens_mean, empty_output_rate, repetition_rate: answer shape.

Besides the aggregate record, each version writes its per-item scores (one row
per evaluation item and metric: task, item_id, metric, value, plus the answer
for generation items), so two versions can be compared item by item with paired
statistics.
"""

from __future__ import annotations

import logging
import math
import time

from domainllm.errors import DataError, PipelineError
from domainllm.io import write_json, write_parquet

log = logging.getLogger(__name__)


def items_frame(rows: list[tuple]):
    """The per-item table of ``<version>.items.parquet`` from (task, item_id, metric,
    value, output) tuples."""
    import polars as pl

    schema = {
        "task": pl.String,
        "item_id": pl.String,
        "metric": pl.String,
        "value": pl.Float64,
        "output": pl.String,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


GENERATION_COLUMNS = ("id", "prompt", "reference", "output", "output_tokens")

# Which direction is better, for the Markdown table's arrows.
HIGHER_IS_BETTER = {
    "jcqa_acc": True,
    "jcqa_acc_norm": True,
    "jcqa_acc_bytes": True,
    "domain_bits_per_char": False,
    "domain_perplexity": False,
    "chrf": True,
    "chrf_sentence_mean": True,
    "bleu": True,
    "rouge_l": True,
    "jsquad_exact_match": True,
    "jsquad_f1": True,
    "evaluator_score": True,
    "empty_output_rate": False,
    "repetition_rate": False,
}


def evaluate_version(
    version: str,
    model: str,
    generations: str,
    domain_texts: str,
    jcqa: str,
    evaluator: str,
    output: str,
    *,
    jcqa_max_items: int | None = 200,
    ppl_seq_len: int = 128,
    batch_size: int = 16,
    trust_remote_code: bool = False,
    items_output: str | None = None,
    prompts: str | None = None,
    tokenize: str = "ja-mecab",
) -> dict:
    """Compute every metric of one model version; write R/eval/versions/<version>.json.

    Args:
        version: version name (base, cpt, sft, sft-gptq).
        model: the version's model folder (a GPTQ folder loads too).
        generations: R/generations/<version>.parquet.
        domain_texts: held-out domain Parquet (column ``text``).
        jcqa: JCommonsenseQA file.
        evaluator: trained feedback evaluator folder.
        output: JSON file to write: {"version", "model", "metrics", "info"}.
        jcqa_max_items: first N JCommonsenseQA items.
        ppl_seq_len: window length for domain bits per character.
        batch_size: sequences per forward pass.
        trust_remote_code: allow custom model code.
        items_output: Parquet of per-item scores (task, item_id, metric, value, output).
        prompts: eval_prompts.parquet (id, task, answers): which generations are JSQuAD
            questions and their answers; None treats every generation as an instruction.
        tokenize: BLEU/ROUGE-L tokenizer (ja-mecab or char).

    Returns:
        The record written.
    """
    import torch

    from domainllm.data.jsquad import JSQUAD_TASK
    from domainllm.evaluate.feedback import format_dialogue, load_evaluator
    from domainllm.evaluate.likelihood import (
        domain_bits_per_char,
        load_jcqa,
        mcqa_item_results,
    )
    from domainllm.evaluate.metrics import generation_metrics, qa_scores
    from domainllm.infer.generation import read_table
    from domainllm.models.loading import load_for_inference

    t0 = time.perf_counter()
    gens = read_table(generations, GENERATION_COLUMNS)
    domain = read_table(domain_texts, ("text",))
    items = load_jcqa(jcqa, jcqa_max_items)
    judge = load_evaluator(evaluator)

    # Stripped: leading newlines of a generation are no part of the answer (and must not
    # look like a turn boundary to the evaluator).
    outputs = [(o or "").strip() for o in gens["output"].to_list()]
    tasks, answers = _tasks_and_answers(gens, generations, prompts)
    free = [i for i, t in enumerate(tasks) if t != JSQUAD_TASK]
    qa = [i for i, t in enumerate(tasks) if t == JSQUAD_TASK]
    if not free:
        raise DataError(f"{generations}: no instruction (non-JSQuAD) generations")
    refs, toks, asked = gens["reference"].to_list(), gens["output_tokens"].to_list(), gens["prompt"]
    metrics = generation_metrics(
        [outputs[i] for i in free],
        [refs[i] for i in free],
        [toks[i] for i in free],
        tokenize=tokenize,
    )
    qa_result = qa_scores([outputs[i] for i in qa], [answers[i] for i in qa]) if qa else None
    if qa_result:
        metrics["jsquad_exact_match"] = qa_result["exact_match"]
        metrics["jsquad_f1"] = qa_result["f1"]
    judged = judge.score([format_dialogue(asked[i], outputs[i]) for i in free])
    metrics["evaluator_score"] = float(judged.mean())

    lm, tokenizer = load_for_inference(model, trust_remote_code=trust_remote_code)
    with torch.inference_mode():
        mc_items = mcqa_item_results(lm, tokenizer, items, batch_size=batch_size)
        dom = domain_bits_per_char(
            lm,
            tokenizer,
            [t for t in domain["text"].to_list() if t],
            ppl_seq_len,
            batch_size=batch_size,
        )
    n_mc = len(mc_items)
    metrics.update(
        jcqa_acc=sum(r["correct"] for r in mc_items) / n_mc,
        jcqa_acc_norm=sum(r["correct_norm"] for r in mc_items) / n_mc,
        jcqa_acc_bytes=sum(r["correct_bytes"] for r in mc_items) / n_mc,
        domain_bits_per_char=dom["bits_per_char"],
        domain_perplexity=dom["perplexity"],
    )
    metrics = {k: float(v) for k, v in sorted(metrics.items())}
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise PipelineError(f"{model}: version '{version}' has non-finite metrics {bad}")
    record = {
        "version": version,
        "model": str(model),
        "metrics": metrics,
        "info": {
            "jcqa_items": n_mc,
            "domain_tokens": dom["tokens"],
            "domain_chars": dom["chars"],
            "generations": gens.height,
            "jsquad_items": len(qa),
            "evaluator": str(evaluator),
            "seconds": time.perf_counter() - t0,
        },
    }
    if items_output is not None:
        _write_items(items_output, mc_items, gens, outputs, judged, free, qa, qa_result, tokenize)
    write_json(record, output)
    log.info("version %s: %s", version, metrics)
    return record


def _tasks_and_answers(gens, generations: str, prompts: str | None):
    """Task and reference answers of each generation, from the evaluation prompts by id."""
    import polars as pl

    from domainllm.infer.generation import read_table

    refs = gens["reference"].to_list()
    if prompts is None:
        tasks, answers = ["elyza"] * gens.height, [[r] for r in refs]
    else:
        table = read_table(prompts, ("id", "task", "answers"), rows="prompts")
        joined = gens.select(pl.col("id").cast(pl.String)).join(
            table.select(pl.col("id").cast(pl.String), "task", "answers"),
            on="id",
            how="left",
            maintain_order="left",
        )
        missing = joined.filter(pl.col("task").is_null())
        if missing.height:
            raise DataError(
                f"{generations}: generation id {missing['id'][0]} is not in the prompts {prompts}"
            )
        tasks, answers = joined["task"].to_list(), joined["answers"].to_list()
    for item_id, task, ref, ans in zip(gens["id"].to_list(), tasks, refs, answers, strict=True):
        if not (ref or "").strip() or not ans:
            raise DataError(f"{generations}: item {item_id} ({task}) has no reference answer")
    return tasks, answers


def _write_items(
    path: str,
    mc_items: list[dict],
    gens,
    outputs: list[str],
    judged,
    free: list[int],
    qa: list[int],
    qa_result: dict | None,
    tokenize: str,
) -> None:
    """Per-item scores in long form: one row per (task, item_id, metric)."""

    from domainllm.evaluate.metrics import sentence_bleu, sentence_chrf, sentence_rouge_l

    rows = []
    for r in mc_items:
        for metric in ("correct", "correct_norm", "correct_bytes"):
            rows.append(("jcqa", str(r["id"]), f"jcqa_{metric}", float(r[metric]), None))
    ids, refs = gens["id"].to_list(), gens["reference"].to_list()
    outs, golds = [outputs[i] for i in free], [refs[i] for i in free]
    per_metric = {
        "chrf": sentence_chrf(outs, golds),
        "bleu": sentence_bleu(outs, golds, tokenize),
        "rouge_l": sentence_rouge_l(outs, golds, tokenize),
        "evaluator_score": [float(j) for j in judged],
    }
    for k, i in enumerate(free):
        for metric, values in per_metric.items():
            rows.append(("generation", str(ids[i]), metric, float(values[k]), outputs[i]))
    for k, i in enumerate(qa):
        for metric in ("exact_match", "f1"):
            value = 100 * qa_result[f"item_{metric}"][k]
            rows.append(("jsquad", str(ids[i]), f"jsquad_{metric}", value, outputs[i]))
    write_parquet(items_frame(rows), path)
