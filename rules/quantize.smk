# Post-training quantisation: GPTQ (llm-compressor) of the instruction-tuned model,
# calibrated on random windows of the domain shards. The output is a
# compressed-tensors folder that vLLM and transformers both load; quantize.json in
# it compares perplexity before/after with a round-to-nearest baseline.


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
        mem_mb=8000,
        runtime=60,
    log:
        f"{L}/quantize_gptq.log",
    conda:
        "../envs/quantize.yaml"
    script:
        "../scripts/quantize_gptq.py"
