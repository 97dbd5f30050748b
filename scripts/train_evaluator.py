"""Snakemake adapter: train and validate the feedback evaluator."""

from domainllm.evaluate.feedback import train_evaluator
from domainllm.logs import log_to

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    train_evaluator(
        snakemake.input.train,  # noqa: F821
        snakemake.input.test,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        kind=p.kind,
        num_boost_round=p.num_boost_round,
        seed=p.seed,
    )
