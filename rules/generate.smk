# Generation: every model version answers the held-out ELYZA prompts with the same
# backend and decoding settings (greedy by default), one job per version.


rule generate:
    input:
        model=version_model_dir,
        prompts=EVAL_PROMPTS,
        # The chosen base: trust_remote_code is its setting (see quantize_gptq).
        origin=chosen_base_dir,
    output:
        f"{R}/generations/{{version}}.parquet",
    params:
        backend=config["generate"]["backend"],
        max_new_tokens=config["generate"]["max_new_tokens"],
        temperature=config["generate"]["temperature"],
        batch_size=config["generate"]["batch_size"],
        seed=config["seed"],
        trust_remote_code=chosen_base_setting("trust_remote_code", False),
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    log:
        f"{L}/generate/{{version}}.log",
    conda:
        "../envs/serve.yaml"
    script:
        "../scripts/generate.py"
