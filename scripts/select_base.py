"""Snakemake adapter: rank the scored base candidates and write the table and chosen.json."""

from domainllm.logs import log_to
from domainllm.models.select import select_base

with log_to(snakemake.log[0]):  # noqa: F821
    select_base(
        list(snakemake.input.scores),  # noqa: F821
        snakemake.output.table,  # noqa: F821
        snakemake.output.table_md,  # noqa: F821
        snakemake.output.chosen,  # noqa: F821
        weights=dict(snakemake.params.weights),  # noqa: F821
        choose=snakemake.params.choose,  # noqa: F821
        max_lost_char_rate=snakemake.params.max_lost_char_rate,  # noqa: F821
    )
