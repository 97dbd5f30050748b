"""Multiple-choice tasks as YAML task files, scored by log-likelihood.

A task file names a data file and says how each record becomes an item: the
prompt (a ``str.format`` template over the record's fields), the choices (fields
of the record, one list field, or fixed label words) and the label (an index,
or a value looked up in ``label.values``). Every candidate is scored on every
task file listed in ``base.selection.tasks``; a task's metrics become the
columns ``<name>_acc``, ``<name>_acc_norm`` (and ``<name>_acc_bytes``), which
``base.selection.weights`` may weight. The format is documented in
``docs/selection.md``; :data:`TASK_SCHEMA` is its JSON Schema (each key described).

Example (``config/tasks/jcommonsenseqa.yaml``)::

    name: jcqa
    version: 1
    path: data/samples/jglue/jcommonsenseqa-v1.3_valid-v1.3.json
    prompt: "質問:{question}\\n答え:"
    choices: {fields: [choice0, choice1, choice2, choice3, choice4]}
    label: {field: label}
    max_items: 150
    metrics: [acc, acc_norm]

Loading the task files is light (YAML and jsonschema only): the workflow does
it while parsing, so a bad task file fails before any job runs.
"""

from __future__ import annotations

import copy
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from domainllm.errors import ConfigError, DataError

STRING = {"type": "string"}
TASK_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "path", "prompt", "choices", "label"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": "^[a-z][a-z0-9_]*$",
            "description": "Task name, the prefix of its metric columns (<name>_acc, ...).",
        },
        "description": {
            "type": "string",
            "default": "",
            "description": "What the task measures, and its source.",
        },
        "version": {
            "type": ["integer", "string"],
            "default": 1,
            "description": "Recorded with the scores; raise it when prompt or data change.",
        },
        "path": {
            "type": "string",
            "minLength": 1,
            "description": "Data file (JSON Lines or one JSON array; .gz allowed), relative to "
            "the working directory.",
        },
        "format": {
            "enum": ["auto", "jsonl", "json"],
            "default": "auto",
            "description": "auto: a JSON array when the file starts with '[', else JSON Lines.",
        },
        "explode": {
            "type": "array",
            "items": STRING,
            "default": [],
            "description": "List fields to flatten, outermost first: each element (an object) "
            "becomes a record that also sees the fields of the records around it.",
        },
        "prompt": {
            "type": "string",
            "minLength": 1,
            "description": "The context every choice continues: a str.format template over "
            "the record's fields.",
        },
        "target_delimiter": {
            "type": "string",
            "default": "",
            "description": "Text between the prompt and each choice (lm-evaluation-harness's "
            'target_delimiter; "" suits Japanese).',
        },
        "choices": {
            "type": "object",
            "additionalProperties": False,
            "description": "Exactly one of fields, field, words.",
            "properties": {
                "fields": {
                    "type": "array",
                    "items": STRING,
                    "minItems": 2,
                    "description": "Fields holding one choice each.",
                },
                "field": {"type": "string", "description": "A field holding the list of choices."},
                "words": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 2,
                    "description": "The same label words for every item.",
                },
            },
        },
        "label": {
            "type": "object",
            "additionalProperties": False,
            "required": ["field"],
            "description": "Where the correct choice comes from.",
            "properties": {
                "field": {"type": "string", "description": "Field holding the label."},
                "values": {
                    "type": "array",
                    "minItems": 2,
                    "items": {"type": ["string", "integer", "number", "boolean"]},
                    "description": "The field's value for each choice, in choice order; "
                    "without it the field is the 0-based choice index.",
                },
            },
        },
        "max_items": {
            "type": ["integer", "null"],
            "minimum": 1,
            "default": None,
            "description": "Items scored (null: all); base.selection.max_items caps it further.",
        },
        "seed": {
            "type": ["integer", "null"],
            "default": None,
            "description": "null: the first max_items items; an integer: max_items items drawn "
            "with this seed (kept in file order).",
        },
        "metrics": {
            "type": "array",
            "items": {"enum": ["acc", "acc_norm", "acc_bytes"]},
            "minItems": 1,
            "uniqueItems": True,
            "default": ["acc", "acc_norm"],
            "description": "Metrics reported as columns (lm-evaluation-harness definitions).",
        },
    },
}
CHOICE_FORMS = ("fields", "field", "words")


@dataclass(frozen=True)
class TaskSpec:
    """One validated task file; see :data:`TASK_SCHEMA` for the keys."""

    file: str
    name: str
    path: str
    prompt: str
    choices: dict
    label: dict
    description: str = ""
    version: int | str = 1
    format: str = "auto"
    explode: tuple[str, ...] = ()
    target_delimiter: str = ""
    max_items: int | None = None
    seed: int | None = None
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    prompt_fields: tuple[str, ...] = field(default=(), compare=False)

    def where(self, key: str) -> str:
        """``task file <file>, key '<key>'``, for messages about the data."""
        return f"task file {self.file}, key '{key}'"


def _key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _schema_errors(raw: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(TASK_SCHEMA)
    lines = []
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(e.absolute_path), e.message))
    for e in errors[:10]:
        where = _key_path(e.absolute_path)
        if e.validator == "additionalProperties":
            allowed = sorted(e.schema.get("properties", {}))
            for k in sorted(set(e.instance) - set(allowed)):
                key = k if where == "<root>" else f"{where}.{k}"
                lines.append(f"unknown key '{key}' (allowed here: {', '.join(allowed)})")
        else:
            lines.append(f"key '{where}': {e.message}")
    return lines


def load_task(path: str | Path) -> TaskSpec:
    """Read and validate one task file (the data file is read later, by :func:`task_items`).

    Raises:
        ConfigError: naming the file and the key: not YAML, an unknown key, a
            wrong type, not exactly one choices form, label values that do not
            match the label words, or a prompt that is not a valid template.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: task file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a task file is a mapping of keys (name, path, prompt, ...)")
    problems = _schema_errors(raw)
    if problems:
        raise ConfigError(f"{p}: invalid task file:\n  " + "\n  ".join(problems))
    task = copy.deepcopy(raw)
    for key, sub in TASK_SCHEMA["properties"].items():
        if key not in task and "default" in sub:
            task[key] = copy.deepcopy(sub["default"])
    forms = [f for f in CHOICE_FORMS if f in task["choices"]]
    if len(forms) != 1:
        raise ConfigError(
            f"{p}: key 'choices': give exactly one of {', '.join(CHOICE_FORMS)} "
            f"(got {', '.join(forms) or 'none'})"
        )
    values = task["label"].get("values")
    if values is not None:
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{p}: key 'label.values': values repeat")
        n = len(task["choices"].get("words") or task["choices"].get("fields") or values)
        if len(values) != n:
            raise ConfigError(
                f"{p}: key 'label.values': {len(values)} values for {n} choices "
                "(one value per choice, in choice order)"
            )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(task["prompt"]) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{p}: key 'prompt': not a valid template ({e})") from e
    bad = [f for f in fields if not f.isidentifier()]
    if bad:
        raise ConfigError(
            f"{p}: key 'prompt': '{{{bad[0]}}}' is not a field name (use {{field}}; "
            "write {{ and }} for literal braces)"
        )
    return TaskSpec(
        file=str(path),
        name=task["name"],
        path=task["path"],
        prompt=task["prompt"],
        choices=dict(task["choices"]),
        label=dict(task["label"]),
        description=task["description"],
        version=task["version"],
        format=task["format"],
        explode=tuple(task["explode"]),
        target_delimiter=task["target_delimiter"],
        max_items=task["max_items"],
        seed=task["seed"],
        metrics=tuple(task["metrics"]),
        prompt_fields=tuple(dict.fromkeys(fields)),
    )


def load_tasks(paths: list[str]) -> list[TaskSpec]:
    """Load every task file; task names must be unique (they prefix metric columns).

    Raises:
        ConfigError: a bad task file, or two files with the same task name.
    """
    tasks = [load_task(p) for p in paths]
    seen: dict[str, str] = {}
    for t in tasks:
        if t.name in seen:
            raise ConfigError(
                f"{t.file}: key 'name': task '{t.name}' is also the name in {seen[t.name]} "
                "(names prefix the metric columns and must be unique)"
            )
        seen[t.name] = t.file
    return tasks


def _records(task: TaskSpec):
    """Yield ``(location, record)`` for every record of the data file, exploded.

    The location is the line (or array item) and, for exploded records, the
    position inside it: ``"12 sentences[3] opinions[0]"``.
    """
    from domainllm.io import open_text, read_jsonl

    p = Path(task.path)
    if not p.is_file():
        raise DataError(f"{p}: data file not found ({task.where('path')})")
    fmt = task.format
    if fmt == "auto":
        with open_text(p) as f:
            head = f.read(4096).lstrip()
        fmt = "json" if head.startswith("[") else "jsonl"
    if fmt == "json":
        with open_text(p) as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
        if not isinstance(rows, list):
            raise DataError(f"{p}: expected a JSON array of objects ({task.where('format')})")
        top = ((f"item {i}", r) for i, r in enumerate(rows, 1))
    else:
        top = ((str(line), r) for line, r in read_jsonl(p))
    for loc, rec in top:
        if not isinstance(rec, dict):
            raise DataError(f"{_at(task, loc)}: expected a JSON object, got {type(rec).__name__}")
        yield from _explode(task, loc, rec, 0)


def _at(task: TaskSpec, loc: str) -> str:
    """``data.jsonl:12`` (a line) or ``data.json: item 12`` (an array element)."""
    return f"{task.path}:{loc}" if loc[:1].isdigit() else f"{task.path}: {loc}"


def _explode(task: TaskSpec, loc: str, rec: dict, depth: int):
    if depth == len(task.explode):
        yield loc, rec
        return
    key = task.explode[depth]
    inner = rec.get(key)
    if not isinstance(inner, list):
        raise DataError(
            f"{_at(task, loc)}: field '{key}' is missing or not a list ({task.where('explode')})"
        )
    outer = {k: v for k, v in rec.items() if k != key}
    for i, element in enumerate(inner):
        here = f"{loc} {key}[{i}]"
        if not isinstance(element, dict):
            raise DataError(f"{_at(task, here)}: expected an object ({task.where('explode')})")
        yield from _explode(task, here, {**outer, **element}, depth + 1)


def _item(task: TaskSpec, loc: str, rec: dict) -> dict:
    where = _at(task, loc)
    missing = [f for f in task.prompt_fields if f not in rec]
    if missing:
        raise DataError(f"{where}: no field '{missing[0]}' ({task.where('prompt')})")
    context = task.prompt.format_map({f: rec[f] for f in task.prompt_fields})
    spec = task.choices
    if "words" in spec:
        choices = list(spec["words"])
    elif "fields" in spec:
        absent = [f for f in spec["fields"] if f not in rec]
        if absent:
            raise DataError(f"{where}: no field '{absent[0]}' ({task.where('choices.fields')})")
        choices = [str(rec[f]) for f in spec["fields"]]
    else:
        value = rec.get(spec["field"])
        if not isinstance(value, list) or len(value) < 2:
            raise DataError(
                f"{where}: field '{spec['field']}' is not a list of at least two choices "
                f"({task.where('choices.field')})"
            )
        choices = [str(c) for c in value]
    lab = task.label
    if lab["field"] not in rec:
        raise DataError(f"{where}: no field '{lab['field']}' ({task.where('label.field')})")
    raw = rec[lab["field"]]
    if lab.get("values") is not None:
        if raw not in lab["values"]:
            raise DataError(
                f"{where}: label {raw!r} is not one of {lab['values']} "
                f"({task.where('label.values')})"
            )
        label = lab["values"].index(raw)
    else:
        try:
            label = int(raw)
        except (TypeError, ValueError) as e:
            raise DataError(
                f"{where}: label {raw!r} is not a choice index ({task.where('label.field')}; "
                "give label.values to map values to choices)"
            ) from e
    if not 0 <= label < len(choices):
        raise DataError(
            f"{where}: label {label} outside 0..{len(choices) - 1} ({task.where('label.field')})"
        )
    return {
        "id": loc,
        "context": context,
        "delimiter": task.target_delimiter,
        "choices": choices,
        "label": label,
    }


def effective_max_items(task: TaskSpec, cap: int | None = None) -> int | None:
    """The task's max_items, capped by ``cap`` (``base.selection.max_items``); None: all."""
    limits = [n for n in (task.max_items, cap) if n is not None]
    return min(limits) if limits else None


def task_items(task: TaskSpec, max_items: int | None = None) -> list[dict]:
    """The task's items: ``[{"id", "context", "delimiter", "choices", "label"}, ...]``.

    Args:
        task: a loaded task file.
        max_items: a further cap on the items (``base.selection.max_items``).

    Raises:
        DataError: naming the data file, the line (and exploded position) and the
            task-file key of a record that does not fit the task, or no items.
    """
    n = effective_max_items(task, max_items)
    records = _records(task)
    if task.seed is None:
        items = []
        for where, rec in records:
            if n is not None and len(items) >= n:
                break
            items.append(_item(task, where, rec))
    else:
        every = list(records)
        keep = range(len(every))
        if n is not None and n < len(every):
            keep = sorted(random.Random(task.seed).sample(range(len(every)), n))
        items = [_item(task, *every[i]) for i in keep]
    if not items:
        raise DataError(f"{task.path}: no items ({task.file})")
    return items
