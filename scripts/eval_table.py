"""Snakemake adapter: one table over every model version, with intervals, plots and metrics.json."""

from domainllm.evaluate.table import eval_table
from domainllm.logs import log_to

p = snakemake.params  # noqa: F821
out = snakemake.output  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    eval_table(
        list(snakemake.input.records),  # noqa: F821
        out.table,
        out.table_md,
        out.metrics,
        table_html=out.table_html,
        scores=list(snakemake.input.scores),  # noqa: F821
        plot_metrics_png=out.plot_metrics,
        plot_scores_png=out.plot_scores,
        n_boot=p.n_boot,
        seed=p.seed,
    )
