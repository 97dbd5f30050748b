"""What the domain selection did, for people: a score histogram and a markdown report.

``score_histogram`` draws the distribution of every document's score (stacked by
source) with the cut marked; ``selection_markdown`` lists the top and bottom kept
and dropped documents with their titles, scores and first characters, so a
reader can judge where the cut falls. matplotlib runs headless (Agg).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from domainllm.io import atomic_path, write_text

log = logging.getLogger(__name__)

SNIPPET_CHARS = 120
MAX_LEGEND_SOURCES = 8


def score_histogram(
    scores: np.ndarray,
    sources: np.ndarray,
    threshold: float,
    path: str | Path,
    *,
    summary: dict | None = None,
    bins: int = 60,
) -> None:
    """Write a PNG histogram of ``scores`` stacked by source, the cut as a vertical line.

    Args:
        scores: every document's score.
        sources: every document's source name (same length).
        threshold: the lowest kept score.
        path: the PNG to write (atomically).
        summary: the selection report (method, value, n_kept, n_in) for the title.
        bins: histogram bins.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.asarray(scores, dtype=np.float64)
    sources = np.asarray(sources, dtype=object)
    names, counts = np.unique(sources, return_counts=True)
    names = list(names[np.argsort(-counts, kind="stable")])
    if len(names) > MAX_LEGEND_SOURCES:  # the rest as one "other" layer
        names = names[: MAX_LEGEND_SOURCES - 1] + ["other"]
        sources = np.where(np.isin(sources, names), sources, "other")
    edges = np.histogram_bin_edges(scores, bins=bins)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.hist(
        [scores[sources == n] for n in names],
        bins=edges,
        stacked=True,
        label=[str(n) for n in names],
    )
    s = summary or {}
    cut = f"cut {s.get('method', '')}={s.get('value', '')}: score >= {threshold:.4f}"
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.5, label=cut)
    ax.set_xlabel(f"cosine similarity to the domain seeds ({s.get('score', 'score')})")
    ax.set_ylabel("documents")
    kept = s.get("n_kept", int((scores >= threshold).sum()))
    ax.set_title(
        f"Domain selection: {kept} of {len(scores)} documents kept "
        f"({s.get('backend') or 'embeddings'})"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _cell(text: object, limit: int | None = None) -> str:
    s = "" if text is None else str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + "…"
    s = " ".join(s.split())  # newlines and tabs would break the table row
    return s.replace("\\", "\\\\").replace("|", "\\|")


def selection_markdown(
    summary: dict,
    sections: dict[str, list[dict]],
    path: str | Path,
    *,
    histogram: str | None = None,
) -> None:
    """Write the markdown report: the cut, per-source counts and one table per section.

    Args:
        summary: the selection report (``select_domain``'s JSON).
        sections: section title -> documents (dicts with id, source, title, text, score).
        path: the markdown file to write (atomically).
        histogram: the histogram PNG, linked relative to the report if given.
    """
    lines = [
        "# Domain selection",
        "",
        f"- embedder: {summary.get('backend')}"
        + (f" ({summary['model']})" if summary.get("model") else "")
        + f", dimension {summary.get('dim')}",
        f"- score: {summary.get('score')}"
        + (f" (k={summary['topk']})" if summary.get("topk") else "")
        + f" against {summary.get('n_seeds')} seed documents",
        f"- cut: {summary.get('method')}={summary.get('value')}, "
        f"threshold {summary.get('threshold', float('nan')):.4f}",
        f"- kept {summary.get('n_kept')} of {summary.get('n_in')} documents "
        f"({summary.get('n_parts')} part(s))",
        "",
    ]
    if histogram:
        rel = Path(histogram)
        try:
            rel = rel.relative_to(Path(path).parent)
        except ValueError:
            pass
        lines += [f"![score histogram]({rel.as_posix()})", ""]
    lines += ["| source | documents | kept | mean score |", "|---|---:|---:|---:|"]
    for src, st in summary.get("per_source", {}).items():
        lines.append(f"| {_cell(src)} | {st['n_in']} | {st['n_kept']} | {st['mean_score']:.4f} |")
    for title, docs in sections.items():
        lines += ["", f"## {title}", ""]
        if not docs:
            lines.append("(none)")
            continue
        lines += [
            f"| rank | score | source | id | title | first {SNIPPET_CHARS} characters |",
            "|---:|---:|---|---|---|---|",
        ]
        for i, d in enumerate(docs, 1):
            lines.append(
                f"| {i} | {d['score']:.4f} | {_cell(d.get('source'))} | {_cell(d.get('id'))} | "
                f"{_cell(d.get('title'), 60)} | {_cell(d.get('text'), SNIPPET_CHARS)} |"
            )
    write_text("\n".join(lines) + "\n", path)
    log.info("selection report -> %s", path)
