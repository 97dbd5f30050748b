"""Compare two model versions: metrics with paired bootstrap intervals, examples, models, data.

A side is ``[WHERE:]VERSION``:

- ``sft``: version ``sft`` of the run folder given by ``--results`` (default ``results``);
- ``runs/exp1/results:sft``: version ``sft`` of another run folder;
- ``v1.2:sft`` or ``HEAD~1:sft``: version ``sft`` as of a git revision, its artifacts
  read through DVC's Python API (``dvc.api.open``) from the repository's cache or remote.

Usage:
    domainllm diff sft sft-gptq
    domainllm diff HEAD~1:sft sft --fail-on jcqa_acc:0.02 --out results/diff/sft
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domainllm.errors import PipelineError
from domainllm.evaluate.version import HIGHER_IS_BETTER
from domainllm.io import write_text

log = logging.getLogger(__name__)

# Per-item metrics and the version metric each one averages to.
ITEM_METRICS = {
    "jcqa_correct": "jcqa_acc",
    "jcqa_correct_norm": "jcqa_acc_norm",
    "jcqa_correct_bytes": "jcqa_acc_bytes",
    "chrf": "chrf_sentence_mean",
    "evaluator_score": "evaluator_score",
}


@dataclass
class Side:
    """One side of a comparison: a version's record, per-item scores and where they came from."""

    label: str
    version: str
    record: dict
    items: object  # polars.DataFrame or None
    run: Path | None = None
    rev: str | None = None
    model_info: dict = field(default_factory=dict)
    data_info: dict = field(default_factory=dict)


def _open_artifact(results: str, rel: str, rev: str | None, binary: bool = False):
    """Open ``<results>/<rel>`` from the work tree, or as of git revision ``rev`` via DVC."""
    mode = "rb" if binary else "r"
    if rev is None:
        path = Path(results) / rel
        if not path.exists():
            raise FileNotFoundError(path)
        return open(path, mode)
    import dvc.api

    return dvc.api.open(f"{results}/{rel}", rev=rev, mode=mode)


def _read_side(spec: str, results: str) -> Side:
    import polars as pl

    where, _, version = spec.rpartition(":")
    run, rev = Path(results), None
    if where:
        if Path(where).is_dir():
            run = Path(where)
        else:
            rev = where
    label = spec
    try:
        with _open_artifact(str(run), f"eval/versions/{version}.json", rev) as f:
            record = json.load(f)
    except FileNotFoundError as e:
        raise PipelineError(f"diff {spec}: no evaluation of version '{version}' ({e})") from e
    except Exception as e:  # DVC raises its own errors for unknown revisions or paths
        raise PipelineError(f"diff {spec}: cannot read '{version}' at '{where}': {e}") from e
    items = None
    with contextlib.suppress(FileNotFoundError, Exception):
        with _open_artifact(str(run), f"eval/versions/{version}.items.parquet", rev, True) as f:
            items = pl.read_parquet(io.BytesIO(f.read()))
    side = Side(label, version, record, items, run=run if rev is None else None, rev=rev)
    if side.run is not None:
        side.model_info = model_info(record.get("model", ""))
        side.data_info = data_info(side.run)
    return side


def model_info(folder: str) -> dict:
    """Parameter count, quantisation scheme, size on disk and config of a model folder."""
    path = Path(folder)
    if not (path / "config.json").exists():
        return {}
    config = json.loads((path / "config.json").read_text())
    params = 0
    for f in sorted(path.glob("*.safetensors")):
        header_len = int.from_bytes(f.read_bytes()[:8], "little")
        header = json.loads(f.read_bytes()[8 : 8 + header_len])
        for name, t in header.items():
            if name != "__metadata__":
                params += math.prod(t["shape"])
    qc = config.get("quantization_config") or {}
    scheme = "none"
    if qc:
        groups = qc.get("config_groups") or {}
        bits = sorted({g.get("weights", {}).get("num_bits") for g in groups.values()} - {None})
        scheme = f"{qc.get('quant_method', '?')} {qc.get('format', '')} bits={bits}".strip()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    keep = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "torch_dtype")
    return {
        "stored_parameters": params,
        "quantisation": scheme,
        "size_on_disk_mb": round(size / 1e6, 3),
        **{k: config.get(k) for k in keep if k in config},
    }


def data_info(run: Path) -> dict:
    """Documents and tokens per source and the selection cut of a run folder."""
    out = {}
    sel = run / "corpus" / "selection.json"
    if sel.exists():
        s = json.loads(sel.read_text())
        out["selection"] = {k: s.get(k) for k in ("backend", "method", "value", "threshold")}
        out["selection"]["kept"] = s.get("n_kept")
    for manifest in sorted((run / "shards").glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        out[f"shards/{manifest.parent.name}"] = {
            "total_tokens": m.get("total_tokens"),
            "total_docs": m.get("total_docs"),
            "sources": m.get("sources", {}),
        }
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean difference b - a over paired items, its 95% interval and a two-sided p-value."""
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    means = diff[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    # Share of resamples on the other side of zero, both tails (floored at 1/n_boot).
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return {
        "delta": float(diff.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float(min(1.0, max(p, 1 / n_boot))),
        "n": int(len(diff)),
    }


def compare(a: Side, b: Side, n_boot: int = 2000, seed: int = 0, n_examples: int = 5) -> dict:
    """Every metric of both sides, with paired statistics where per-item scores exist."""
    import polars as pl

    ma, mb = a.record["metrics"], b.record["metrics"]
    rows = []
    paired = {}
    if a.items is not None and b.items is not None:
        joined = a.items.join(b.items, on=["task", "item_id", "metric"], suffix="_b")
        for metric, version_metric in ITEM_METRICS.items():
            sub = joined.filter(pl.col("metric") == metric)
            if sub.height:
                paired[version_metric] = paired_bootstrap(
                    sub["value"].to_numpy(), sub["value_b"].to_numpy(), n_boot, seed
                )
    for m in sorted(set(ma) | set(mb)):
        va, vb = ma.get(m), mb.get(m)
        row = {"metric": m, "a": va, "b": vb, "delta": None if None in (va, vb) else vb - va}
        row["higher_is_better"] = HIGHER_IS_BETTER.get(m)
        row.update({k: v for k, v in paired.get(m, {}).items() if k != "delta"})
        rows.append(row)
    examples = []
    if a.items is not None and b.items is not None:
        gen = (
            a.items.filter(pl.col("metric") == "evaluator_score")
            .join(
                b.items.filter(pl.col("metric") == "evaluator_score"),
                on=["task", "item_id"],
                suffix="_b",
            )
            .with_columns((pl.col("value_b") - pl.col("value")).alias("change"))
            .sort(pl.col("change").abs(), descending=True)
            .head(n_examples)
        )
        examples = [
            {
                "item_id": r["item_id"],
                "score_a": r["value"],
                "score_b": r["value_b"],
                "output_a": r["output"],
                "output_b": r["output_b"],
            }
            for r in gen.iter_rows(named=True)
        ]
    return {
        "a": {"label": a.label, "model": a.record.get("model"), "info": a.model_info},
        "b": {"label": b.label, "model": b.record.get("model"), "info": b.model_info},
        "metrics": rows,
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


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


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
            ["metric", a, b, "B - A", "95% CI (paired bootstrap)", "p", "items"],
            metric_rows,
        )
    ]
    keys = sorted(set(result["a"]["info"]) | set(result["b"]["info"]))
    if keys:
        rows = [
            [k, _fmt(result["a"]["info"].get(k)), _fmt(result["b"]["info"].get(k))] for k in keys
        ]
        tables.append(("Models", ["", a, b], rows))
    data_keys = sorted(set(result["data"]["a"]) | set(result["data"]["b"]))
    if data_keys:
        rows = [
            [
                k,
                json.dumps(result["data"]["a"].get(k), ensure_ascii=False),
                json.dumps(result["data"]["b"].get(k), ensure_ascii=False),
            ]
            for k in data_keys
        ]
        tables.append(("Data", ["", a, b], rows))
    if result["examples"]:
        rows = [
            [e["item_id"], _fmt(e["score_a"]), _fmt(e["score_b"]), e["output_a"], e["output_b"]]
            for e in result["examples"]
        ]
        tables.append(
            (
                "Examples whose evaluator score changed most",
                ["item", a, b, "output A", "output B"],
                rows,
            )
        )
    return tables


def to_markdown(result: dict) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", "<br>")

    out = [f"# {result['a']['label']} vs {result['b']['label']}\n"]
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

    out = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{esc(result['a']['label'])} vs {esc(result['b']['label'])}</title>",
        "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;"
        "vertical-align:top}</style>",
        f"<h1>{esc(result['a']['label'])} vs {esc(result['b']['label'])}</h1>",
    ]
    for title, header, rows in _tables(result):
        out.append(f"<h2>{esc(title)}</h2><table>")
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
