"""Snakemake adapter: train and validate one evaluator of evaluate.evaluators."""

from domainllm.evaluate.feedback import train_evaluator
from domainllm.logs import log_to

p = snakemake.params  # noqa: F821
with log_to(snakemake.log[0]):  # noqa: F821
    train_evaluator(
        snakemake.input.train,  # noqa: F821
        snakemake.input.test,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        kind=p.kind,
        name=snakemake.wildcards.evaluator,  # noqa: F821
        stack=list(snakemake.input.stack),  # noqa: F821
        seed=p.seed,
        num_threads=snakemake.threads,  # noqa: F821
        **p.options,
    )
