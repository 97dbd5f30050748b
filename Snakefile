# domainllm: base-model selection -> domain corpus -> continued pre-training ->
# instruction tuning -> GPTQ -> generation -> evaluation, as one DAG.
#
#   snakemake --profile profiles/local            # the embedded default on CPU
#   snakemake --profile profiles/slurm              # on a SLURM cluster
#
# The Snakefile is a table of contents: all logic lives in src/domainllm.

from domainllm.config import validate_config


configfile: "config/config.yaml"


validate_config(config, workflow.source_path("config/schema.yaml"), source="config")


# `snakemake --report report.html`: one self-contained page of the results marked report().
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/corpus.smk"
include: "rules/select_base.smk"
include: "rules/train.smk"
include: "rules/quantize.smk"
include: "rules/generate.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        EVAL_TABLE,
        VALIDATION_MD,
        SELECTION_TABLE,
        CORPUS_SELECTED,
        CORPUS_EMBED_CHECK,
        QUANT_QUALITY,


rule corpus:
    input:
        CORPUS_SELECTED,
        CORPUS_EMBED_CHECK,


rule selection:
    input:
        SELECTION_TABLE,


rule cpt:
    input:
        model_dir("cpt"),


rule sft:
    input:
        model_dir("sft"),


rule quantize:
    input:
        model_dir("sft-gptq"),
        QUANT_QUALITY,


rule evaluate:
    input:
        EVAL_TABLE,
        VALIDATION_MD,
