"""Snakemake adapter: tokenise the selected corpus with one base's tokenizer into binary shards."""

from domainllm.corpus.shards import write_shards
from domainllm.logs import log_to

with log_to(snakemake.log[0]):  # noqa: F821
    write_shards(
        snakemake.input.selected,  # noqa: F821
        snakemake.input.tokenizer,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        tokens_per_shard=snakemake.params.tokens_per_shard,  # noqa: F821
        validation_fraction=snakemake.params.validation_fraction,  # noqa: F821
        seed=snakemake.params.seed,  # noqa: F821
    )
