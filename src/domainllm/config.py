"""Load and validate the workflow configuration against ``config/schema.yaml``.

The schema is JSON Schema written in YAML: every key has a description and,
where optional, a default; unknown keys are errors. Validation fills defaults in
place so every stage sees a complete config.

Usage:
    domainllm validate config/config.yaml [--print]
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path

import yaml

from domainllm.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def _key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _extend_with_default(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    import jsonschema

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _suggest(key, allowed: list[str]) -> str:
    """``did you mean ...?`` for a mistyped key, then the keys allowed at its level."""
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    hint = f": did you mean '{close[0]}'?" if close else ""
    return f"{hint} (allowed here: {', '.join(allowed)})"


def validate_config(
    config: dict, schema_path: str | Path = SCHEMA_PATH, *, source: str = "config"
) -> dict:
    """Validate ``config`` in place, filling defaults.

    Args:
        config: the parsed configuration.
        schema_path: the YAML JSON-Schema file.
        source: a name for the config in messages (usually its file path).

    Returns:
        The same dict, with defaults filled.

    Raises:
        ConfigError: naming the key path (``corpus.sources[2].format``) of the
            first problems found, e.g. an unknown key or a wrong type; or a path
            outside the working directory (:func:`check_paths`).
    """
    import jsonschema

    if not Path(schema_path).is_file():
        raise ConfigError(
            f"schema {schema_path} not found: run from a checkout of the workflow or pass its "
            "config/schema.yaml explicitly"
        )
    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(config).__name__}")
    validator = _extend_with_default(jsonschema.Draft202012Validator)(schema)
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path))
    )
    if errors:
        lines = []
        for e in errors[:10]:
            where = _key_path(e.absolute_path)
            if e.validator == "additionalProperties":
                allowed = sorted(e.schema.get("properties", {}))
                extra = sorted(set(e.instance) - set(allowed))
                for k in extra:
                    key = f"{where}.{k}" if where != "<root>" else k
                    lines.append(f"unknown key '{key}'{_suggest(k, allowed)}")
            elif where.endswith("api_key_env"):
                # Not echoed: what was pasted here instead of a variable name may be the key.
                lines.append(
                    f"key '{where}': not an environment variable name (name the variable that "
                    "holds the API key; the key itself never goes in the config)"
                )
            else:
                lines.append(f"key '{where}': {e.message}")
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(lines))
    check_paths(config, schema, source=source)
    return config


def _path_values(node: dict, value, where: list, defs: dict):
    """``(key path, value)`` of every string the schema marks as a path: a ``$ref`` to
    ``#/$defs/path`` or ``format: path``."""
    ref = node.get("$ref", "")
    if ref == "#/$defs/path" or node.get("format") == "path":
        if isinstance(value, str):
            yield _key_path(where), value
        return
    if ref.startswith("#/$defs/"):
        node = defs[ref.rsplit("/", 1)[1]]
    if isinstance(value, dict):
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from _path_values(sub, v, [*where, k], defs)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, v in enumerate(value):
            yield from _path_values(node["items"], v, [*where, i], defs)


def outside_workdir(path: str) -> bool:
    """Whether ``path`` leaves the working directory: absolute (``~`` too), or climbing
    out with ``..``. Decided by the text alone: a symlink inside the working directory
    (data/ linked to a shared disk) is the user's own choice and stays allowed."""
    if os.path.isabs(os.path.expanduser(path)):
        return True
    norm = os.path.normpath(path)
    return norm == os.pardir or norm.startswith(os.pardir + os.sep)


def check_paths(config: dict, schema: dict, *, source: str = "config") -> None:
    """Refuse paths from the config that escape the working directory unless
    ``paths.allow_outside`` is true.

    Checked: every key the schema marks as a path (``$ref: "#/$defs/path"`` or
    ``format: path``) except ``evaluate.judge.model`` with the openai backend (a name
    the server knows, not a path). Hub ids (``org/name``) are relative and pass.

    Raises:
        ConfigError: naming each key and its path, and the key that allows them.
    """
    if config.get("paths", {}).get("allow_outside"):
        return
    judge = config.get("evaluate", {}).get("judge", {})
    bad = []
    for key, value in _path_values(schema, config, [], schema.get("$defs", {})):
        if key == "evaluate.judge.model" and judge.get("backend") == "openai":
            continue
        if outside_workdir(value):
            bad.append(f"config key '{key}': '{value}' is outside the work directory")
    if bad:
        raise ConfigError(
            f"{source}: paths outside the work directory:\n  " + "\n  ".join(bad) + "\n"
            "(set config key 'paths.allow_outside: true' to allow absolute paths and '..')"
        )


def load_config(
    path: str | Path, overrides: dict | None = None, schema_path: str | Path = SCHEMA_PATH
) -> dict:
    """Read a YAML config file, apply nested ``overrides`` and validate it.

    Raises:
        ConfigError: the file is missing or unreadable, not valid YAML (naming
            ``file:line:column``), or does not match the schema (naming the key).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 at byte {e.start}") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from e
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise ConfigError(f"{where}: not valid YAML: {detail}") from e
    if config is None:
        config = {}
    if overrides and isinstance(config, dict):
        deep_update(config, overrides)
    return validate_config(config, schema_path, source=str(path))


def deep_update(base: dict, new: dict) -> dict:
    """Recursively merge ``new`` into ``base`` (dicts merge, anything else replaces)."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base
