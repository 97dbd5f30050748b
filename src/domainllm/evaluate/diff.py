"""Compare two model versions: metrics with paired bootstrap intervals, examples, models, data.

A side is ``[WHERE:]VERSION``:

- ``sft``: version ``sft`` of the run folder given by ``--results`` (default ``results``),
  so ``diff sft sft-gptq`` compares two versions of one evaluation table;
- ``runs/exp1/results:sft``: version ``sft`` of another run folder;
- ``v1.2:sft`` or ``HEAD~1:sft``: version ``sft`` as of a git revision, its artifacts
  (the outputs dvc.lock records at that revision) read through DVC's Python API
  (``dvc.api.DVCFileSystem``) from the cache or the remote; ``--results`` is then the
  results folder inside the repository.

What is compared, all read from each side's run folder ``R`` (or revision):

- metrics: ``R/eval/versions/<version>.json`` and the version's row of the evaluation
  table ``R/eval/table.parquet`` (which adds the evaluators' scores); each with both
  values, the difference and, where per-item values exist on both sides
  (``<version>.items.parquet``, ``R/eval/scores/*/<version>.parquet``), a paired
  bootstrap 95% interval and p-value over the items both sides share;
- the items whose score changed most, with both answers;
- the models: parameter count (packed quantised weights unpacked), quantisation
  scheme, size on disk, config (the folder the version record names);
- the data: documents per source scored and kept by the selection and its threshold
  (``R/corpus/selection.json``), documents and tokens per source in the shards
  (``R/shards/*/manifest.json``).

Usage:
    domainllm diff sft sft-gptq
    domainllm diff HEAD~1:sft sft --fail-on jcqa_acc:0.02 --out results/diff/sft

Exit status: 0; 3 when B is worse than A beyond a ``--fail-on`` tolerance; 1 on an error.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from domainllm.errors import PipelineError
from domainllm.io import write_text

log = logging.getLogger(__name__)

# Config keys shown for every model (other keys only where the two sides differ).
CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "torch_dtype",
    "dtype",
)
# Tensors that describe a quantised weight rather than being parameters.
QUANT_AUX = ("weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx", "input_scale")
# Per-item metrics that say which examples changed most, in order of preference.
EXAMPLE_METRICS = ("evaluator_score", "chrf", "rouge_l", "jsquad_f1")


# ---------------------------------------------------------------- where the files are


class Folder:
    """Files of a project folder (a run folder's parent) in the work tree."""

    def __init__(self, root: Path, where: str | None = None):
        self.root = Path(root)
        self.where = where or str(root)

    def _path(self, rel: str) -> Path:
        return Path(rel) if os.path.isabs(rel) else self.root / rel

    def open(self, rel: str):
        return open(self._path(rel), "rb")

    def exists(self, rel: str) -> bool:
        return self._path(rel).exists()

    def glob(self, pattern: str) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob(pattern))

    def sizes(self, rel: str) -> dict[str, int]:
        folder = self._path(rel)
        return {
            str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()
        }


class Revision:
    """Files of the DVC repository in the working directory as of git revision ``rev``."""

    def __init__(self, rev: str, repo: str = "."):
        from dvc.api import DVCFileSystem

        self.fs = DVCFileSystem(repo, rev=rev)
        self.fs.ls("")  # opens the repository at the revision now: a bad one fails here
        self.where = rev

    def open(self, rel: str):
        return self.fs.open(rel, "rb")

    def exists(self, rel: str) -> bool:
        return self.fs.exists(rel)

    def glob(self, pattern: str) -> list[str]:
        return sorted(p.lstrip("/") for p in self.fs.glob(pattern))

    def sizes(self, rel: str) -> dict[str, int]:
        out = {}
        for path, info in self.fs.find(rel, detail=True).items():
            size = info.get("size")
            if size is None:  # files inside a tracked folder: the cache object's size
                with self.fs.open(path, "rb") as f:
                    size = f.seek(0, 2)
            out[str(PurePosixPath(path.lstrip("/")).relative_to(rel))] = size
        return out


def _read_json(store, rel: str):
    with store.open(rel) as f:
        return json.loads(f.read())


def _read_parquet(store, rel: str):
    import polars as pl

    with store.open(rel) as f:
        return pl.read_parquet(io.BytesIO(f.read()))


def _optional(read, store, rel: str):
    """``read(store, rel)``, or None where the file does not exist."""
    return read(store, rel) if store.exists(rel) else None


# ---------------------------------------------------------------- one side


@dataclass
class Side:
    """One side of a comparison: a version's metrics, per-item scores, model and data."""

    label: str
    version: str
    where: str
    record: dict
    items: object = None  # polars.DataFrame of <version>.items.parquet, or None
    scores: dict = field(default_factory=dict)  # evaluator -> its score file's DataFrame
    metrics: dict = field(default_factory=dict)
    model_info: dict = field(default_factory=dict)
    data_info: dict = field(default_factory=dict)


def _locate(spec: str, results: str) -> tuple[object, str, str]:
    """(store, results folder inside it, version) of a side ``[WHERE:]VERSION``."""
    where, _, version = spec.rpartition(":")
    if not version:
        raise PipelineError(f"diff {spec}: no version after ':'")
    run = Path(where or results)
    if not where or run.is_dir():
        return Folder(run.parent, where=str(run)), run.name, version
    if os.path.isabs(results):
        raise PipelineError(f"diff {spec}: --results must be relative to the repository")
    try:
        return Revision(where), results, version
    except Exception as e:  # noqa: BLE001 - DVC and scmrepo raise their own types
        raise PipelineError(
            f"diff {spec}: '{where}' is neither a run folder nor a git revision of a DVC "
            f"repository here ({type(e).__name__}: {e})"
        ) from e


def _model_path(store, results: str, model: str) -> str | None:
    """The record's model folder inside ``store``: recorded relative to the run's working
    directory, which holds the run folder (``results/models/...``)."""
    if not model:
        return None
    if os.path.isabs(model) or store.exists(model):
        return model
    parts = PurePosixPath(model).parts
    name = PurePosixPath(results).name
    if name in parts:  # a run folder moved elsewhere: the path below it
        return str(PurePosixPath(results, *parts[parts.index(name) + 1 :]))
    return None


def _table_metrics(table, version: str) -> dict:
    if table is None or "version" not in table.columns:
        return {}
    rows = table.filter(table["version"] == version).to_dicts()
    if not rows:
        return {}
    return {
        k: v
        for k, v in rows[0].items()
        if k not in ("version", "model")
        and not k.endswith(("_ci_low", "_ci_high"))
        and isinstance(v, int | float)
        and math.isfinite(v)
    }


def _read_side(spec: str, results: str) -> Side:
    store, run, version = _locate(spec, results)
    try:
        record = _read_json(store, f"{run}/eval/versions/{version}.json")
    except FileNotFoundError as e:
        raise PipelineError(
            f"diff {spec}: no evaluation of version '{version}' in {store.where} ({e})"
        ) from e
    except Exception as e:  # noqa: BLE001 - DVC raises its own errors for unknown paths
        raise PipelineError(f"diff {spec}: cannot read version '{version}': {e}") from e
    side = Side(spec, version, store.where, record)
    side.items = _optional(_read_parquet, store, f"{run}/eval/versions/{version}.items.parquet")
    for path in store.glob(f"{run}/eval/scores/*/{version}.parquet"):
        df = _read_parquet(store, path)
        name = df["evaluator"][0] if "evaluator" in df.columns else Path(path).parent.name
        side.scores[name] = df
    table = _optional(_read_parquet, store, f"{run}/eval/table.parquet")
    side.metrics = {**_table_metrics(table, version), **record.get("metrics", {})}
    folder = _model_path(store, run, record.get("model", ""))
    if folder and store.exists(f"{folder}/config.json"):
        side.model_info = model_info(store, folder)
    side.data_info = data_info(store, run)
    return side


# ---------------------------------------------------------------- models and data


def _safetensors_header(store, path: str) -> dict:
    with store.open(path) as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size))


def _scheme(qc: dict) -> tuple[str, int | None]:
    """A readable quantisation scheme and the weight bits (None if mixed or unknown)."""
    if not qc:
        return "none (full precision)", None
    groups = list((qc.get("config_groups") or {}).values())
    weights = [g.get("weights") or {} for g in groups]
    bits = sorted({w.get("num_bits") for w in weights} - {None})
    acts = sorted({(g.get("input_activations") or {}).get("num_bits") for g in groups} - {None})
    parts = [f"W{'/'.join(map(str, bits)) or '?'}A{'/'.join(map(str, acts)) or 16}"]
    for w in weights[:1]:
        if w.get("strategy"):
            parts.append(w["strategy"] + (f" {w['group_size']}" if w.get("group_size") else ""))
        if w.get("symmetric") is not None:
            parts.append("symmetric" if w["symmetric"] else "asymmetric")
    if qc.get("ignore"):
        parts.append("not " + ", ".join(qc["ignore"]))
    method = ", ".join(x for x in (qc.get("quant_method"), qc.get("format")) if x)
    return " ".join(parts[:1]) + "".join(f", {p}" for p in parts[1:]) + f" ({method})", (
        bits[0] if len(bits) == 1 else None
    )


def model_info(store, folder: str) -> dict:
    """Parameter count, quantisation scheme, size on disk and config of a model folder.

    Parameters are counted from the safetensors headers: packed quantised weights
    (compressed-tensors ``weight_packed``, int32) count as the weights they hold, their
    scales and zero points not at all, so a quantised model counts as its original.
    """
    config = _read_json(store, f"{folder}/config.json")
    scheme, bits = _scheme(config.get("quantization_config") or {})
    sizes = store.sizes(folder)
    params = 0
    for rel in sorted(sizes):
        if not rel.endswith(".safetensors"):
            continue
        for name, t in _safetensors_header(store, f"{folder}/{rel}").items():
            if name == "__metadata__" or name.endswith(QUANT_AUX):
                continue
            n = math.prod(t["shape"])
            if name.endswith("weight_packed") and t.get("dtype") == "I32" and bits:
                n *= 32 // bits
            params += n
    info = {
        "parameters": params,
        "quantisation": scheme,
        "size_on_disk_mb": round(sum(sizes.values()) / 1e6, 3),
        "weights_mb": round(
            sum(v for k, v in sizes.items() if k.endswith(".safetensors")) / 1e6, 3
        ),
    }
    for k, v in config.items():
        if k != "quantization_config" and not isinstance(v, dict):
            info[f"config.{k}"] = v
    return info


def data_info(store, run: str) -> dict:
    """Documents per source and the cut of the selection; documents and tokens per source
    in the shards of each tokenizer."""
    out: dict = {}
    sel = _optional(_read_json, store, f"{run}/corpus/selection.json")
    if sel:
        out["selection threshold"] = sel.get("threshold")
        out["selection cut"] = f"{sel.get('method')} {sel.get('value')}"
        out["embedder"] = " ".join(str(sel[k]) for k in ("backend", "model") if sel.get(k))
        out["documents scored"] = sel.get("n_in")
        out["documents kept"] = sel.get("n_kept")
        for source, s in sorted((sel.get("per_source") or {}).items()):
            out[f"{source}: documents scored"] = s.get("n_in")
            out[f"{source}: documents kept"] = s.get("n_kept")
    for path in store.glob(f"{run}/shards/*/manifest.json"):
        m = _read_json(store, path)
        tok = (m.get("tokenizer") or {}).get("name") or Path(path).parent.name
        splits = m.get("splits") or {"train": m}
        out[f"shards ({tok}): documents"] = sum(s.get("total_docs", 0) for s in splits.values())
        out[f"shards ({tok}): tokens"] = sum(s.get("total_tokens", 0) for s in splits.values())
        per_source: dict[str, dict[str, int]] = {}
        for s in splits.values():
            for source, c in (s.get("sources") or {}).items():
                acc = per_source.setdefault(source, {"docs": 0, "tokens": 0})
                acc["docs"] += c.get("docs", 0)
                acc["tokens"] += c.get("tokens", 0)
        for source, c in sorted(per_source.items()):
            out[f"{source}: documents in shards ({tok})"] = c["docs"]
            out[f"{source}: tokens in shards ({tok})"] = c["tokens"]
    return out


# ---------------------------------------------------------------- statistics


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0, aggregate: str = "mean"
) -> dict:
    """B - A of the mean (or median) over paired items, its 95% interval and a two-sided
    p-value: items are resampled in pairs and the statistic recomputed on each side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    stat = np.median if aggregate == "median" else np.mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    deltas = stat(b[idx], axis=1) - stat(a[idx], axis=1)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    # Share of resamples on the other side of zero, both tails (floored at 1/n_boot).
    p = 2 * min((deltas <= 0).mean(), (deltas >= 0).mean())
    return {
        "delta": float(stat(b) - stat(a)),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float(min(1.0, max(p, 1 / n_boot))),
        "n": len(a),
    }


def _per_item(side: Side) -> dict[str, tuple[dict, str]]:
    """Version metric -> ({item key: value}, "mean" | "median") for every metric with
    per-item values, as the evaluation table gets its intervals."""
    import polars as pl

    from domainllm.evaluate.metrics import repetition_ratio
    from domainllm.evaluate.table import ITEM_TO_VERSION

    out: dict[str, tuple[dict, str]] = {}
    df = side.items
    if df is not None:
        for metric in df["metric"].unique().sort().to_list():
            target = ITEM_TO_VERSION.get(metric, metric)
            if target in side.metrics and target not in out:
                sub = df.filter(pl.col("metric") == metric)
                keys = zip(sub["task"].to_list(), sub["item_id"].to_list(), strict=True)
                out[target] = (dict(zip(keys, sub["value"].to_list(), strict=True)), "mean")
        if "output" in df.columns:
            gen = df.filter(pl.col("task") == "generation").unique(
                subset=["item_id"], keep="first", maintain_order=True
            )
            outputs = {
                ("generation", i): (o or "").strip()
                for i, o in zip(gen["item_id"].to_list(), gen["output"].to_list(), strict=True)
            }
            derived = {
                "output_chars_mean": ({k: len(o) for k, o in outputs.items()}, "mean"),
                "output_chars_median": ({k: len(o) for k, o in outputs.items()}, "median"),
                "empty_output_rate": ({k: float(not o) for k, o in outputs.items()}, "mean"),
                "repetition_rate": (
                    {k: repetition_ratio(o) for k, o in outputs.items()},
                    "mean",
                ),
            }
            for m, v in derived.items():
                if m in side.metrics and m not in out and v[0]:
                    out[m] = v
    for name, scores in side.scores.items():
        pairs = list(zip(scores["item_id"].to_list(), scores["score"].to_list(), strict=True))
        out[f"{name}_score"] = ({("answer", i): s for i, s in pairs if s is not None}, "mean")
        rate = f"{name}_no_verdict_rate"
        if rate in side.metrics:
            out[rate] = ({("answer", i): float(s is None) for i, s in pairs}, "mean")
    return out


def _direction(metric: str) -> bool | None:
    from domainllm.evaluate.table import _direction as table_direction

    return table_direction(metric)


def _examples(a: Side, b: Side, n: int) -> tuple[str | None, list[dict]]:
    """The items whose per-item score changed most, with both answers."""
    import polars as pl

    if a.items is None or b.items is None or "output" not in a.items.columns:
        return None, []
    shared = set(a.items["metric"].unique()) & set(b.items["metric"].unique())
    metric = next((m for m in EXAMPLE_METRICS if m in shared), None)
    if metric is None:
        return None, []
    rows = (
        a.items.filter(pl.col("metric") == metric)
        .join(b.items.filter(pl.col("metric") == metric), on=["task", "item_id"], suffix="_b")
        .with_columns((pl.col("value_b") - pl.col("value")).alias("change"))
        .filter(pl.col("change") != 0)
        .sort([pl.col("change").abs(), "item_id"], descending=[True, False])
        .head(n)
    )
    return metric, [
        {
            "item_id": r["item_id"],
            "task": r["task"],
            "score_a": r["value"],
            "score_b": r["value_b"],
            "output_a": r["output"],
            "output_b": r["output_b"],
        }
        for r in rows.iter_rows(named=True)
    ]


def compare(a: Side, b: Side, n_boot: int = 2000, seed: int = 0, n_examples: int = 5) -> dict:
    """Every metric of either side with both values; paired statistics over shared items."""
    items_a, items_b = _per_item(a), _per_item(b)
    rows = []
    for m in sorted(set(a.metrics) | set(b.metrics)):
        va, vb = a.metrics.get(m), b.metrics.get(m)
        row = {
            "metric": m,
            "a": va,
            "b": vb,
            "delta": None if va is None or vb is None else vb - va,
            "higher_is_better": _direction(m),
        }
        if m in items_a and m in items_b:
            (xa, agg), (xb, _) = items_a[m], items_b[m]
            keys = sorted(set(xa) & set(xb))
            if keys:
                stats = paired_bootstrap(
                    [xa[k] for k in keys], [xb[k] for k in keys], n_boot, seed, agg
                )
                row.update({k: v for k, v in stats.items() if k != "delta"})
        rows.append(row)
    metric, examples = _examples(a, b, n_examples)

    def describe(s: Side) -> dict:
        return {
            "label": s.label,
            "version": s.version,
            "where": s.where,
            "model": s.record.get("model"),
            "info": s.model_info,
        }

    return {
        "a": describe(a),
        "b": describe(b),
        "metrics": rows,
        "example_metric": metric,
        "examples": examples,
        "data": {"a": a.data_info, "b": b.data_info},
    }


def regressions(result: dict, fail_on: list[str]) -> list[str]:
    """Messages for each ``metric:tolerance`` whose B is worse than A by more than tolerance."""
    by_name = {r["metric"]: r for r in result["metrics"]}
    out = []
    for rule in fail_on:
        name, _, tol = rule.partition(":")
        if name not in by_name:
            raise PipelineError(f"--fail-on {rule}: unknown metric '{name}'")
        try:
            tolerance = float(tol or 0)
        except ValueError as e:
            raise PipelineError(f"--fail-on {rule}: tolerance '{tol}' is not a number") from e
        r = by_name[name]
        if r["delta"] is None or r["higher_is_better"] is None:
            raise PipelineError(f"--fail-on {rule}: '{name}' has no direction or no value")
        worse = -r["delta"] if r["higher_is_better"] else r["delta"]
        if worse > tolerance:
            out.append(f"{name}: {r['a']:.4g} -> {r['b']:.4g} (worse by {worse:.4g} > {tolerance})")
    return out


# ---------------------------------------------------------------- rendering


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list | dict):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _side_by_side(a: dict, b: dict, keys: list[str]) -> list[list[str]]:
    rows = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (va, vb))
        delta = vb - va if numbers else None
        if isinstance(delta, float):
            delta = round(delta, 6)
        rows.append([k, _fmt(va), _fmt(vb), _fmt(delta) if numbers else ""])
    return rows


def _tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    a, b = result["a"]["label"], result["b"]["label"]
    metric_rows = [
        [
            r["metric"] + {True: " ↑", False: " ↓", None: ""}[r["higher_is_better"]],
            _fmt(r["a"]),
            _fmt(r["b"]),
            _fmt(r["delta"]),
            f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if "ci_low" in r else "",
            _fmt(r.get("p_value")),
            _fmt(r.get("n")),
        ]
        for r in result["metrics"]
    ]
    tables = [
        (
            "Metrics",
            ["metric", a, b, "B - A", "95% CI of B - A (paired bootstrap)", "p", "shared items"],
            metric_rows,
        )
    ]
    ia, ib = result["a"]["info"], result["b"]["info"]
    if ia or ib:
        keys = ["parameters", "quantisation", "size_on_disk_mb", "weights_mb"]
        keys += [
            k
            for k in dict.fromkeys([*ia, *ib])
            if k.startswith("config.")
            and (k.removeprefix("config.") in CONFIG_KEYS or ia.get(k) != ib.get(k))
        ]
        tables.append(("Models", ["", a, b, "B - A"], _side_by_side(ia, ib, keys)))
    da, db = result["data"]["a"], result["data"]["b"]
    if da or db:
        keys = list(dict.fromkeys([*da, *db]))
        tables.append(("Data", ["", a, b, "B - A"], _side_by_side(da, db, keys)))
    if result["examples"]:
        rows = [
            [
                e["item_id"],
                _fmt(e["score_a"]),
                _fmt(e["score_b"]),
                e["output_a"] or "",
                e["output_b"] or "",
            ]
            for e in result["examples"]
        ]
        tables.append(
            (
                f"Examples whose {result['example_metric']} changed most",
                ["item", a, b, f"answer of {a}", f"answer of {b}"],
                rows,
            )
        )
    return tables


def _summary(result: dict) -> list[str]:
    a, b = result["a"], result["b"]
    lines = [f"A = {a['label']} ({a['where']}), B = {b['label']} ({b['where']})."]
    if result.get("regressions"):
        lines.append("Regressions beyond --fail-on: " + "; ".join(result["regressions"]) + ".")
    return lines


def to_markdown(result: dict) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", "<br>")

    out = [f"# {result['a']['label']} vs {result['b']['label']}\n", *_summary(result), ""]
    for title, header, rows in _tables(result):
        out.append(f"## {title}\n")
        out.append("| " + " | ".join(cell(h) for h in header) + " |")
        out.append("|" + "---|" * len(header))
        out.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)
        out.append("")
    return "\n".join(out)


def to_html(result: dict) -> str:
    def esc(s: str) -> str:
        return html.escape(str(s)).replace("\n", "<br>")

    title = f"{esc(result['a']['label'])} vs {esc(result['b']['label'])}"
    out = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{title}</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top}</style>",
        f"<h1>{title}</h1>",
        *(f"<p>{esc(line)}</p>" for line in _summary(result)),
    ]
    for name, header, rows in _tables(result):
        out.append(f"<h2>{esc(name)}</h2><table>")
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        out.extend("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
        out.append("</table>")
    return "\n".join(out) + "\n"


def diff(
    a: str,
    b: str,
    *,
    results: str = "results",
    out: str | None = None,
    fail_on: list[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[dict, list[str]]:
    """Compare side ``a`` with side ``b``; write ``<out>.md``, ``.html`` and ``.json`` if asked.

    Returns:
        The comparison and the list of regressions beyond the ``fail_on`` tolerances.
    """
    result = compare(_read_side(a, results), _read_side(b, results), n_boot=n_boot, seed=seed)
    failed = regressions(result, fail_on or [])
    result["regressions"] = failed
    if out:
        write_text(to_markdown(result), f"{out}.md")
        write_text(to_html(result), f"{out}.html")
        write_text(
            json.dumps(result, ensure_ascii=False, indent=2, default=str) + "\n", f"{out}.json"
        )
    return result, failed
