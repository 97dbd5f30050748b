"""Snakemake adapter: human-feedback pairs -> labelled train/test texts."""

from domainllm.data.feedback import prepare_feedback
from domainllm.logs import log_to

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    prepare_feedback(
        list(snakemake.input.paths),  # noqa: F821
        snakemake.output.train,  # noqa: F821
        snakemake.output.test,  # noqa: F821
        max_pairs=p.max_pairs,
        test_fraction=p.test_fraction,
        seed=p.seed,
    )
