"""domainllm: a reproducible pipeline for building a domain-specialised LLM.

Stages (each a subpackage): ``corpus`` (ingest, clean, select, shard), ``models``
(build tiny base models, score and select a base), ``train`` (continued
pre-training, instruction tuning), ``quantize`` (GPTQ), ``infer`` (generation
backends behind one interface) and ``evaluate`` (metrics, trained evaluators,
evaluation tables). Heavy libraries are imported lazily inside functions so that
parsing the Snakefile never imports torch.
"""

__version__ = "0.1.0"
