# Post-training quantisation of the instruction-tuned model: GPTQ (llm-compressor),
# calibrated on random windows of the domain shards, and its round-to-nearest (RTN)
# baseline with the same scheme. Both are compressed-tensors folders that vLLM and
# transformers load; quantize_quality compares them with full precision on held-out
# domain text, size on disk and generation speed.


rule quantize_gptq:
    input:
        model=model_dir("sft"),
        shards=chosen_shards,
        # The chosen base: trust_remote_code is its setting, and a param may read a
        # checkpoint only via an input.
        origin=chosen_base_dir,
    output:
        directory(model_dir("sft-gptq")),
    params:
        scheme=config["quantize"]["scheme"],
        group_size=config["quantize"]["group_size"],
        actorder=config["quantize"]["actorder"],
        dampening_frac=config["quantize"]["dampening_frac"],
        ignore=config["quantize"]["ignore"],
        calibration_samples=config["quantize"]["calibration_samples"],
        calibration_seq_len=config["quantize"]["calibration_seq_len"],
        seed=config["seed"],
        trust_remote_code=chosen_base_setting("trust_remote_code", False),
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb(8000),
        runtime=60,
    log:
        f"{L}/quantize_gptq.log",
    conda:
        "../envs/quantize.yaml"
    script:
        "../scripts/quantize_gptq.py"


rule quantize_rtn:
    input:
        model=model_dir("sft"),
        origin=chosen_base_dir,
    output:
        directory(model_dir("sft-rtn")),
    params:
        scheme=config["quantize"]["scheme"],
        group_size=config["quantize"]["group_size"],
        ignore=config["quantize"]["ignore"],
        seed=config["seed"],
        trust_remote_code=chosen_base_setting("trust_remote_code", False),
    threads: 1
    resources:
        mem_mb=mem_mb(8000),
        runtime=30,
    log:
        f"{L}/quantize_rtn.log",
    conda:
        "../envs/quantize.yaml"
    script:
        "../scripts/quantize_rtn.py"


rule quantize_quality:
    input:
        full=model_dir("sft"),
        gptq=model_dir("sft-gptq"),
        rtn=model_dir("sft-rtn"),
        heldout=DOMAIN_HELDOUT,
        prompts=EVAL_PROMPTS,
        origin=chosen_base_dir,
    output:
        json=QUANT_QUALITY,
        md=report(
            QUANT_QUALITY_MD,
            caption="../report/quantize_quality.rst",
            category="4. Quantisation",
            subcategory="Quality",
        ),
    params:
        model_name=MODEL,
        # The window of base selection and evaluation, so perplexities compare.
        seq_len=config["base"]["selection"]["ppl_seq_len"],
        n_prompts=config["quantize"]["quality"]["prompts"],
        max_new_tokens=config["quantize"]["quality"]["max_new_tokens"],
        generate_batch_size=config["quantize"]["quality"]["batch_size"],
        repeats=config["quantize"]["quality"]["repeats"],
        device=config["quantize"]["quality"]["device"],
        trust_remote_code=chosen_base_setting("trust_remote_code", False),
    threads: 1
    resources:
        gpu=QUALITY_GPU,
        mem_mb=mem_mb(8000),
        runtime=60,
    log:
        f"{L}/quantize_quality.log",
    conda:
        "../envs/quantize.yaml"
    script:
        "../scripts/quantize_quality.py"
