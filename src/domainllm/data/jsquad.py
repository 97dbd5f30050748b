"""JSQuAD (JGLUE's extractive QA) as a generation task of the evaluation prompts.

The file is SQuAD v1.1 JSON: ``{"data": [{"title", "paragraphs": [{"context",
"qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}``; JGLUE
contexts start with ``<title> [SEP] ``, which is dropped. A seeded sample of
questions becomes prompts (id ``jsquad/<question id>``, task ``jsquad``): the
instruction, the context, then the question last (a prompt cut from the left to
fit a small model's context keeps the question). The reference is the first
answer; ``answers`` lists the distinct ones (exact match and F1 take the best).
"""

from __future__ import annotations

import json
from pathlib import Path

from domainllm.errors import DataError

JSQUAD_TASK = "jsquad"
# The instruction of lm-evaluation-harness's ja_leaderboard_jsquad task, as a chat message.
INSTRUCTION = "与えられた文脈から、質問に対する答えを抜き出してください。"


def jsquad_prompt(context: str, question: str) -> str:
    """One JSQuAD item as a user message."""
    return f"{INSTRUCTION}\n\n文脈：{context}\n質問：{question}"


def read_jsquad(path: str | Path) -> list[dict]:
    """Every question of a JSQuAD file as ``{id, prompt, reference, answers, task}``.

    Raises:
        DataError: naming the file and the key of a malformed entry, or a question
            without a non-empty answer.
    """
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read JSQuAD JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: expected SQuAD JSON with a 'data' list")
    rows = []
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(article.get("paragraphs") or []):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = para.get("context")
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{where}: missing 'context'")
            context = context.split("[SEP]")[-1].strip()
            for q, qa in enumerate(para.get("qas") or []):
                qid, question = qa.get("id"), qa.get("question")
                answers = [x.get("text") for x in qa.get("answers") or [] if isinstance(x, dict)]
                answers = list(dict.fromkeys(t.strip() for t in answers if isinstance(t, str)))
                answers = [t for t in answers if t]
                if qid is None or not isinstance(question, str) or not question.strip():
                    raise DataError(f"{where}.qas[{q}]: missing 'id' or 'question'")
                if not answers:
                    raise DataError(f"{where}.qas[{q}] (id {qid}): no non-empty answer")
                rows.append(
                    {
                        "id": f"{JSQUAD_TASK}/{qid}",
                        "prompt": jsquad_prompt(context, question.strip()),
                        "reference": answers[0],
                        "answers": answers,
                        "task": JSQUAD_TASK,
                    }
                )
    if not rows:
        raise DataError(f"{path}: no JSQuAD questions")
    return rows


def jsquad_prompts(path: str | Path, max_items: int, seed: int) -> list[dict]:
    """A seeded sample of ``max_items`` questions (all when fewer), in file order."""
    import numpy as np

    rows = read_jsquad(path)
    if max_items >= len(rows):
        return rows
    keep = np.random.default_rng(seed).choice(len(rows), size=max_items, replace=False)
    return [rows[i] for i in sorted(int(i) for i in keep)]


def add_jsquad(eval_df, jsquad: str | None, max_items: int, seed: int, *, task: str):
    """The evaluation prompts with ``task`` and ``answers`` columns, JSQuAD rows appended.

    Args:
        eval_df: prompts (id, prompt, reference, eval_aspect) of the instruction task.
        jsquad: JSQuAD file, or None for none.
        max_items: questions sampled (0: none).
        seed: seeds the sample.
        task: task name of the rows of ``eval_df``.
    """
    import polars as pl

    out = eval_df.with_columns(
        pl.lit(task).alias("task"),
        pl.col("reference")
        .map_elements(lambda r: [r], return_dtype=pl.List(pl.String))
        .alias("answers"),
    )
    if not jsquad or max_items <= 0:
        return out
    rows = jsquad_prompts(jsquad, max_items, seed)
    qa = pl.DataFrame(
        rows,
        schema={"id": pl.String, "prompt": pl.String, "reference": pl.String,
                "answers": pl.List(pl.String), "task": pl.String},
    ).with_columns(pl.lit(None, dtype=pl.String).alias("eval_aspect"))  # fmt: skip
    return pl.concat([out, qa.select(out.columns)], how="vertical")
