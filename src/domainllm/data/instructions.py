"""Instruction data: ELYZA-tasks-100 split into evaluation prompts, plus training sources.

ELYZA-tasks-100 (JSONL: input, output, eval_aspect) is split deterministically
by ``seed``: ``elyza_eval`` items become held-out evaluation prompts with their
reference answers and grading aspects; the rest become SFT candidates (source
``elyza``). Further training sources are listed in config
(``data.instructions.sources``), each with a name, a format and a path:

- ``elyza``: ELYZA-tasks-100 layout, ``{input, output}`` per line; all items train.
- ``self_instruct``: Self-Instruct seed tasks ``{id, instruction, instances: [{input,
  output}]}``; each instance is one example, its input appended to the instruction.
- ``product_log``: logged conversations with user feedback, one JSON object per line::

      {"prompt": str, "response": str, "feedback": "good" | "bad" | null,
       "id": str | int (optional), "timestamp": ISO 8601 str | epoch seconds (optional)}

  ``feedback`` also accepts thumbs_up/thumbs_down, up/down, positive/negative,
  👍/👎, 1/0 and true/false (any case; spaces and hyphens read as ``_``); missing or
  null means no feedback was given. It is normalised to ``good``/``bad``/null.

Every candidate row is ``{id, source, instruction, output, feedback, timestamp}``;
``feedback`` and ``timestamp`` are null for curated sets. Quality filtering
(feedback label, quality score, deduplication) happens later, in
domainllm.train.filter.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path

from domainllm.data.jsquad import add_jsquad
from domainllm.errors import DataError, PipelineError
from domainllm.io import read_jsonl, write_parquet

log = logging.getLogger(__name__)

ELYZA_SOURCE = "elyza"
SELF_INSTRUCT_SOURCE = "self_instruct"
GOOD, BAD = "good", "bad"

# Feedback vocabularies seen in product logs, normalised (lower case, spaces and
# hyphens as "_") to the two labels the filter keeps or drops.
FEEDBACK_LABELS = {
    **dict.fromkeys(["good", "thumbs_up", "thumbsup", "up", "positive", "like", "👍"], GOOD),
    **dict.fromkeys(["bad", "thumbs_down", "thumbsdown", "down", "negative", "dislike", "👎"], BAD),
    **dict.fromkeys(["1", "true"], GOOD),
    **dict.fromkeys(["0", "false"], BAD),
}

CANDIDATE_SCHEMA = {
    "id": "String",
    "source": "String",
    "instruction": "String",
    "output": "String",
    "feedback": "String",
    "timestamp": "String",
}
SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


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


def _row(id_: str, source: str, instruction: str, output: str, **extra) -> dict:
    return {
        "id": id_,
        "source": source,
        "instruction": instruction,
        "output": output,
        "feedback": extra.get("feedback"),
        "timestamp": extra.get("timestamp"),
    }


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


def read_elyza_examples(path: str | Path, source: str) -> list[dict]:
    """An ELYZA-format file as training candidates (every item; ids ``<source>/<n>``)."""
    return [
        _row(f"{source}/{i}", source, r["prompt"], r["reference"])
        for i, r in enumerate(read_elyza(path), 1)
    ]


def read_self_instruct(path: str | Path, source: str = SELF_INSTRUCT_SOURCE) -> list[dict]:
    """Read Self-Instruct seed tasks as SFT candidates, one per instance.

    The instance input (when non-empty) follows the task instruction after a
    blank line. Ids are ``<source>/<task id>``, with ``#<k>`` for the k-th
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
                _row(
                    f"{source}/{task_id}" + (f"#{k}" if k else ""),
                    source,
                    instruction.strip() + (f"\n\n{inp}" if inp else ""),
                    _field(inst, "output", iwhere),
                )
            )
    return rows


def normalize_feedback(value, where: str) -> str | None:
    """A product log's feedback value as ``"good"``, ``"bad"`` or None (no feedback).

    Raises:
        DataError: naming ``where`` and the accepted values, for anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return GOOD if value else BAD
    if isinstance(value, int | float) and value in (0, 1):
        return GOOD if value == 1 else BAD
    if isinstance(value, str):
        key = re.sub(r"[\s-]+", "_", value.strip().lower())
        if not key:
            return None
        if key in FEEDBACK_LABELS:
            return FEEDBACK_LABELS[key]
    raise DataError(
        f"{where}: field 'feedback' has unknown value {value!r} (accepted: good/bad, "
        "thumbs_up/thumbs_down, up/down, positive/negative, like/dislike, 👍/👎, 1/0, "
        "true/false, or null for no feedback)"
    )


def normalize_timestamp(value, where: str) -> str | None:
    """An ISO 8601 string or epoch seconds as an ISO 8601 string (UTC for epochs); None stays."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise DataError(f"{where}: field 'timestamp' must be ISO 8601 text or epoch seconds")
    if isinstance(value, int | float):
        try:
            return dt.datetime.fromtimestamp(value, tz=dt.UTC).isoformat()
        except (OverflowError, OSError, ValueError) as e:
            raise DataError(f"{where}: field 'timestamp' {value} is not valid epoch seconds") from e
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip()).isoformat()
        except ValueError as e:
            raise DataError(
                f"{where}: field 'timestamp' {value!r} is not an ISO 8601 date-time"
            ) from e
    raise DataError(
        f"{where}: field 'timestamp' must be ISO 8601 text or epoch seconds, "
        f"got {type(value).__name__}"
    )


def read_product_log(path: str | Path, source: str) -> list[dict]:
    """Read a product log (prompt, response, feedback, optional id and timestamp).

    Ids are ``<source>/<id>`` with the row's own id, else ``<source>/line<n>``.

    Raises:
        DataError: naming file:line of a missing prompt/response, an unknown feedback
            value, a malformed timestamp or a repeated id.
    """
    rows, seen = [], {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        raw_id = obj.get("id")
        if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
            raise DataError(f"{where}: field 'id' must be a string or an integer")
        local = str(raw_id) if raw_id is not None and str(raw_id) else f"line{lineno}"
        if local in seen:
            raise DataError(f"{where}: id {local!r} repeats line {seen[local]}")
        seen[local] = lineno
        rows.append(
            _row(
                f"{source}/{local}",
                source,
                _field(obj, "prompt", where),
                _field(obj, "response", where),
                feedback=normalize_feedback(obj.get("feedback"), where),
                timestamp=normalize_timestamp(obj.get("timestamp"), where),
            )
        )
    return rows


READERS = {
    "elyza": read_elyza_examples,
    "self_instruct": read_self_instruct,
    "product_log": read_product_log,
}


def read_source(spec: dict) -> list[dict]:
    """Candidates of one configured source ``{name, format, path}``.

    Raises:
        PipelineError: an unknown format or a bad name (config key
            ``data.instructions.sources``); DataError: a malformed file.
    """
    name, fmt, path = spec.get("name"), spec.get("format"), spec.get("path")
    key = "config key 'data.instructions.sources'"
    if not isinstance(name, str) or not SOURCE_NAME.match(name):
        raise PipelineError(f"{key}: source name {name!r} must match {SOURCE_NAME.pattern}")
    if fmt not in READERS:
        raise PipelineError(
            f"{key}: source '{name}' has unknown format {fmt!r} (known: {', '.join(READERS)})"
        )
    if not path or not Path(path).is_file():
        raise DataError(f"{path}: instruction source '{name}' does not exist")
    rows = READERS[fmt](path, name)
    if not rows:
        raise DataError(f"{path}: instruction source '{name}' has no examples")
    return rows


def split_eval(n: int, n_eval: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the evaluation and training items, each in file order."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[:n_eval]), sorted(int(i) for i in perm[n_eval:])


def prepare_instructions(
    elyza: str,
    candidates_output: str,
    eval_output: str,
    *,
    sources: list[dict] | None = None,
    elyza_eval: int,
    seed: int,
    jsquad: str | None = None,
    jsquad_items: int = 0,
) -> dict:
    """Write the SFT candidates and the held-out evaluation prompts.

    Args:
        elyza: ELYZA-tasks-100 JSONL (input, output, eval_aspect).
        candidates_output: Parquet of training examples
            (id, source, instruction, output, feedback, timestamp).
        eval_output: Parquet of evaluation prompts (id, prompt, reference, eval_aspect,
            task: ``elyza`` or ``jsquad``, answers: the reference answers).
        sources: further training sources, ``[{name, format, path}]`` (config
            ``data.instructions.sources``), in order.
        elyza_eval: ELYZA items held out for evaluation (config data.instructions.elyza_eval).
        seed: seeds the split.
        jsquad: JSQuAD file whose sampled questions are appended to the evaluation
            prompts (task ``jsquad``; see domainllm.data.jsquad), or None.
        jsquad_items: JSQuAD questions sampled (config data.jsquad.max_items).

    Returns:
        Counts: ``{"eval", "candidates", "per_source": {name: n}}``.

    Raises:
        DataError: a malformed line (file:line), a duplicate example id, or
            ``elyza_eval`` leaving no ELYZA training item; PipelineError: a bad
            source entry (unknown format, repeated or reserved name).
    """
    import polars as pl

    sources = list(sources or [])
    names = [s.get("name") for s in sources]
    for n in set(names):
        if n == ELYZA_SOURCE or names.count(n) > 1:
            raise PipelineError(
                f"config key 'data.instructions.sources': source name '{n}' is "
                + ("reserved for the ELYZA split" if n == ELYZA_SOURCE else "used twice")
            )
    items = read_elyza(elyza)
    if not 0 < elyza_eval < len(items):
        raise DataError(
            f"{elyza}: data.instructions.elyza_eval={elyza_eval} must be between 1 and "
            f"{len(items) - 1} (the file has {len(items)} items)"
        )
    eval_idx, train_idx = split_eval(len(items), elyza_eval, seed)

    eval_df = pl.DataFrame(
        [items[i] for i in eval_idx],
        schema={"id": pl.String, "prompt": pl.String, "reference": pl.String,
                "eval_aspect": pl.String},
    )  # fmt: skip
    rows = [
        _row(items[i]["id"], ELYZA_SOURCE, items[i]["prompt"], items[i]["reference"])
        for i in train_idx
    ]
    per_source = {ELYZA_SOURCE: len(rows)}
    for spec in sources:
        extra = read_source(spec)
        per_source[spec["name"]] = len(extra)
        rows.extend(extra)
    cand_df = pl.DataFrame(rows, schema={k: getattr(pl, v) for k, v in CANDIDATE_SCHEMA.items()})
    if cand_df["id"].n_unique() != cand_df.height:
        dup = cand_df.filter(pl.col("id").is_duplicated())["id"][0]
        raise DataError(f"duplicate example id {dup} (source {dup.split('/', 1)[0]})")
    eval_df = add_jsquad(eval_df, jsquad, jsquad_items, seed, task=ELYZA_SOURCE)
    write_parquet(eval_df, eval_output)
    write_parquet(cand_df, candidates_output)
    counts = {"eval": eval_df.height, "candidates": cand_df.height, "per_source": per_source}
    log.info("instructions: %s", counts)
    return counts
