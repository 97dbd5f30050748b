# Training: instruction data -> quality filter -> continued pre-training on the
# domain shards -> instruction tuning. Checkpoints live under
# results/checkpoints/<model_name>/<stage>/ (outside the declared outputs), so a
# killed or failed job resumes from the newest one when it is rerun.
#
# The CPU default runs each training job as one process through `script:`.
# With `cpt.launcher: torchrun|deepspeed` train_cpt is a `shell:` rule instead that
# starts the module entry point python -m domainllm.train.cpt under the launcher on
# cpt.gpus_per_node GPUs of cpt.nodes nodes (docs/training.md).


from domainllm.train.common import launch_command


rule prepare_instructions:
    input:
        unpack(instruction_inputs),
    output:
        candidates=SFT_CANDIDATES,
        eval_prompts=EVAL_PROMPTS,
    params:
        # The paths are inputs too (instruction_inputs), so a changed file reruns the rule.
        sources=config["data"]["instructions"]["sources"],
        elyza_eval=config["data"]["instructions"]["elyza_eval"],
        jsquad_items=config["data"]["jsquad"]["max_items"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    log:
        f"{L}/prepare_instructions.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/prepare_instructions.py"


rule filter_sft:
    input:
        candidates=SFT_CANDIDATES,
        evaluator=EVALUATOR_DIR,
    output:
        data=SFT_DATA,
        stats=f"{R}/data/sft_filter.json",
        dropped_samples=f"{R}/data/sft_dropped_samples.jsonl",
    params:
        drop_quantile=config["sft"]["filter"]["drop_quantile"],
        min_score=config["sft"]["filter"]["min_score"],
        drop_feedback=config["sft"]["filter"]["drop_feedback"],
        samples_per_reason=config["sft"]["filter"]["dropped_samples_per_reason"],
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    log:
        f"{L}/filter_sft.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/filter_sft.py"


# train_cpt's keyword arguments that both variants pass, by name.
CPT = config["cpt"]
CPT_OPTIONS = {
    "max_steps": CPT["max_steps"],
    "batch_size": CPT["batch_size"],
    "gradient_accumulation_steps": CPT["gradient_accumulation_steps"],
    "seq_len": CPT["seq_len"],
    "learning_rate": CPT["learning_rate"],
    "warmup_ratio": CPT["warmup_ratio"],
    "save_steps": CPT["save_steps"],
    "deepspeed": CPT["deepspeed"],
    "bf16": CPT["bf16"],
    "peak_flops": CPT["peak_flops"],
    "seed": config["seed"],
}

if CPT["launcher"] == "none":

    # One torch thread by default: on a shared 2-core machine a second thread made
    # CPU steps several times slower; a profile's set-threads raises it on big nodes.
    rule train_cpt:
        input:
            base=chosen_base_dir,
            shards=chosen_shards,
        output:
            report(
                directory(model_dir("cpt")),
                patterns=["{name}_curve.png"],
                caption="../report/loss_cpt.rst",
                category="3. Training",
                subcategory="Continued pre-training",
            ),
        params:
            checkpoint_dir=checkpoint_dir("cpt"),
            **CPT_OPTIONS,
            trust_remote_code=chosen_base_setting("trust_remote_code", False),
            allow_pickle=chosen_base_setting("allow_pickle", False),
        threads: 1
        resources:
            gpu=1,
            nodes=1,
            mem_mb=mem_mb(8000),
            runtime=240,
        log:
            f"{L}/train_cpt.log",
        conda:
            "../envs/train.yaml"
        script:
            "../scripts/train_cpt.py"

else:

    # Several nodes: the job's shell runs srun itself (one torchrun per node), which
    # the SLURM executor allows for jobs with an `mpi` resource; tasks_per_gpu=0 stops
    # it from turning `tasks` into --ntasks-per-gpu.
    CPT_MULTINODE = (
        {"mpi": "srun", "tasks": CPT["nodes"], "tasks_per_gpu": 0} if CPT["nodes"] > 1 else {}
    )

    rule train_cpt:
        input:
            base=chosen_base_dir,
            shards=chosen_shards,
        output:
            report(
                directory(model_dir("cpt")),
                patterns=["{name}_curve.png"],
                caption="../report/loss_cpt.rst",
                category="3. Training",
                subcategory="Continued pre-training",
            ),
        params:
            launch=launch_command(
                "domainllm.train.cpt",
                CPT["launcher"],
                nproc_per_node=CPT["gpus_per_node"],
                nodes=CPT["nodes"],
                port=CPT["port"],
            ),
            checkpoint_dir=checkpoint_dir("cpt"),
            options=launch_options(CPT_OPTIONS, "trust_remote_code", "allow_pickle"),
        threads: CPT["gpus_per_node"]
        resources:
            gpu=CPT["gpus_per_node"] * CPT["nodes"],
            nodes=CPT["nodes"],
            mem_mb=mem_mb(32000 * CPT["gpus_per_node"]),
            runtime=1440,
            **CPT_MULTINODE,
        log:
            f"{L}/train_cpt.log",
        conda:
            "../envs/train.yaml"
        shell:
            "{params.launch} --base {input.base} --shards {input.shards} --output {output} "
            "--checkpoint-dir {params.checkpoint_dir} {params.options} > {log} 2>&1"


rule train_sft:
    input:
        base=model_dir("cpt"),
        data=SFT_DATA,
        # The chosen base (already upstream of cpt): listed because trust_remote_code
        # is that candidate's setting, and a param may read a checkpoint only via an input.
        origin=chosen_base_dir,
        chat_template=sft_chat_template,
    output:
        report(
            directory(model_dir("sft")),
            patterns=["{name}_curve.png"],
            caption="../report/loss_sft.rst",
            category="3. Training",
            subcategory="Instruction tuning",
        ),
    params:
        checkpoint_dir=checkpoint_dir("sft"),
        max_steps=config["sft"]["max_steps"],
        batch_size=config["sft"]["batch_size"],
        gradient_accumulation_steps=config["sft"]["gradient_accumulation_steps"],
        max_len=config["sft"]["max_len"],
        batching=config["sft"]["batching"],
        eval_fraction=config["sft"]["eval_fraction"],
        lora=config["sft"]["lora"],
        learning_rate=config["sft"]["learning_rate"],
        warmup_ratio=config["sft"]["warmup_ratio"],
        save_steps=config["sft"]["save_steps"],
        deepspeed=config["sft"]["deepspeed"],
        bf16=config["sft"]["bf16"],
        peak_flops=config["sft"]["peak_flops"],
        seed=config["seed"],
        trust_remote_code=chosen_base_setting("trust_remote_code", False),
    threads: 1
    resources:
        gpu=1,
        mem_mb=mem_mb(8000),
        runtime=120,
    log:
        f"{L}/train_sft.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/train_sft.py"
