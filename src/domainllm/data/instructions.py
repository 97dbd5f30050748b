"""Instruction data: ELYZA-tasks-100 split into evaluation prompts and training examples.

ELYZA-tasks-100 (JSONL: input, output, eval_aspect) is split deterministically
by ``seed``: ``elyza_eval`` items become held-out evaluation prompts with their
reference answers and grading aspects; the rest become SFT candidates, together
with the Self-Instruct seed tasks (each instance's input appended to the task
instruction). Quality filtering happens later (domainllm.train.filter).
"""

from __future__ import annotations

import logging
from pathlib import Path

from domainllm.errors import DataError
from domainllm.io import read_jsonl, write_parquet

log = logging.getLogger(__name__)

ELYZA_SOURCE = "elyza"
SELF_INSTRUCT_SOURCE = "self_instruct"


def _field(obj: dict, key: str, where: str, *, required: bool = True) -> str:
    if key not in obj:
        if required:
            raise DataError(f"{where}: missing field '{key}'")
        return ""
    value = obj[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def read_elyza(path: str | Path) -> list[dict]:
    """Read ELYZA-tasks-100 rows as ``{id, prompt, reference, eval_aspect}``.

    Ids are ``elyza/<n>`` with n the 1-based item number in file order.

    Raises:
        DataError: naming file:line of a line missing ``input`` or ``output``.
    """
    rows = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        rows.append(
            {
                "id": f"{ELYZA_SOURCE}/{len(rows) + 1}",
                "prompt": _field(obj, "input", where),
                "reference": _field(obj, "output", where),
                "eval_aspect": _field(obj, "eval_aspect", where, required=False),
            }
        )
    if not rows:
        raise DataError(f"{path}: no ELYZA items")
    return rows


def read_self_instruct(path: str | Path) -> list[dict]:
    """Read Self-Instruct seed tasks as SFT candidates, one per instance.

    The instance input (when non-empty) follows the task instruction after a
    blank line. Ids are ``self_instruct/<task id>``, with ``#<k>`` for the k-th
    further instance of a task.

    Raises:
        DataError: naming file:line of a task without instruction, instances or an
            instance output.
    """
    rows = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        instruction = _field(obj, "instruction", where)
        task_id = str(obj.get("id") or f"line{lineno}")
        instances = obj.get("instances")
        if not isinstance(instances, list) or not instances:
            raise DataError(f"{where}: missing or empty field 'instances'")
        for k, inst in enumerate(instances):
            iwhere = f"{where}: instances[{k}]"
            if not isinstance(inst, dict):
                raise DataError(f"{iwhere}: expected an object, got {type(inst).__name__}")
            inp = _field(inst, "input", iwhere, required=False).strip()
            rows.append(
                {
                    "id": f"{SELF_INSTRUCT_SOURCE}/{task_id}" + (f"#{k}" if k else ""),
                    "source": SELF_INSTRUCT_SOURCE,
                    "instruction": instruction.strip() + (f"\n\n{inp}" if inp else ""),
                    "output": _field(inst, "output", iwhere),
                }
            )
    return rows


def split_eval(n: int, n_eval: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the evaluation and training items, each in file order."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[:n_eval]), sorted(int(i) for i in perm[n_eval:])


def prepare_instructions(
    elyza: str,
    self_instruct: str | None,
    candidates_output: str,
    eval_output: str,
    *,
    elyza_eval: int,
    seed: int,
) -> dict:
    """Write the SFT candidates and the held-out evaluation prompts.

    Args:
        elyza: ELYZA-tasks-100 JSONL (input, output, eval_aspect).
        self_instruct: Self-Instruct seed_tasks.jsonl, or None.
        candidates_output: Parquet of training examples (id, source, instruction, output).
        eval_output: Parquet of evaluation prompts (id, prompt, reference, eval_aspect).
        elyza_eval: ELYZA items held out for evaluation (config data.instructions.elyza_eval).
        seed: seeds the split.

    Returns:
        Counts: ``{"eval", "train_elyza", "train_self_instruct", "candidates"}``.

    Raises:
        DataError: a malformed line (file:line), or ``elyza_eval`` leaving no
            ELYZA training item.
    """
    import polars as pl

    items = read_elyza(elyza)
    if not 0 < elyza_eval < len(items):
        raise DataError(
            f"{elyza}: data.instructions.elyza_eval={elyza_eval} must be between 1 and "
            f"{len(items) - 1} (the file has {len(items)} items)"
        )
    extra = read_self_instruct(self_instruct) if self_instruct else []
    eval_idx, train_idx = split_eval(len(items), elyza_eval, seed)

    eval_df = pl.DataFrame(
        [items[i] for i in eval_idx],
        schema={
            "id": pl.String,
            "prompt": pl.String,
            "reference": pl.String,
            "eval_aspect": pl.String,
        },
    )
    train_rows = [
        {
            "id": items[i]["id"],
            "source": ELYZA_SOURCE,
            "instruction": items[i]["prompt"],
            "output": items[i]["reference"],
        }
        for i in train_idx
    ] + extra
    cand_df = pl.DataFrame(
        train_rows,
        schema={
            "id": pl.String,
            "source": pl.String,
            "instruction": pl.String,
            "output": pl.String,
        },
    )
    if cand_df["id"].n_unique() != cand_df.height:
        dup = cand_df.filter(pl.col("id").is_duplicated())["id"][0]
        raise DataError(f"{self_instruct}: duplicate example id {dup}")
    write_parquet(eval_df, eval_output)
    write_parquet(cand_df, candidates_output)
    counts = {
        "eval": eval_df.height,
        "train_elyza": len(train_idx),
        "train_self_instruct": len(extra),
        "candidates": cand_df.height,
    }
    log.info("instructions: %s", counts)
    return counts
