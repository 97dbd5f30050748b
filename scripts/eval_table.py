"""Snakemake adapter: gather the per-version metrics into one table."""

from domainllm.evaluate.version import eval_table
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    eval_table(
        list(snakemake.input),  # noqa: F821
        snakemake.output.table,  # noqa: F821
        snakemake.output.table_md,  # noqa: F821
        snakemake.output.metrics,  # noqa: F821
    )
