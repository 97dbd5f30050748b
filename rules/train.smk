# Training: instruction data -> quality filter -> continued pre-training on the
# domain shards -> instruction tuning. Checkpoints live under
# results/checkpoints/<model_name>/<stage>/ (outside the declared outputs), so a
# killed or failed job resumes from the newest one when it is rerun.
#
# The CPU default runs each training job as one process through `script:`.
# On multi-GPU nodes a `shell:` variant of train_cpt/train_sft launches the same
# module entry points under a launcher instead (a later issue), e.g.
#   deepspeed --num_gpus {resources.gpu} -m domainllm.train.cpt --base {input.base} \
#       --shards {input.shards} --output {output} \
#       --checkpoint-dir {params.checkpoint_dir} --deepspeed config/deepspeed/zero2.json --bf16 ...
# (torchrun --nproc_per_node {resources.gpu} -m domainllm.train.cpt ... works the same way).


rule prepare_instructions:
    input:
        unpack(instruction_inputs),
    output:
        candidates=SFT_CANDIDATES,
        eval_prompts=EVAL_PROMPTS,
    params:
        elyza_eval=config["data"]["instructions"]["elyza_eval"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=1000,
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
    params:
        drop_quantile=config["sft"]["filter"]["drop_quantile"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{L}/filter_sft.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/filter_sft.py"


# One torch thread by default: on a shared 2-core machine a second thread made
# CPU steps several times slower; a profile's set-threads raises it on big nodes.
rule train_cpt:
    input:
        base=chosen_base_dir,
        shards=chosen_shards,
    output:
        directory(model_dir("cpt")),
    params:
        checkpoint_dir=checkpoint_dir("cpt"),
        max_steps=config["cpt"]["max_steps"],
        batch_size=config["cpt"]["batch_size"],
        gradient_accumulation_steps=config["cpt"]["gradient_accumulation_steps"],
        seq_len=config["cpt"]["seq_len"],
        learning_rate=config["cpt"]["learning_rate"],
        warmup_ratio=config["cpt"]["warmup_ratio"],
        save_steps=config["cpt"]["save_steps"],
        deepspeed=config["cpt"]["deepspeed"],
        bf16=config["cpt"]["bf16"],
        peak_flops=config["cpt"]["peak_flops"],
        seed=config["seed"],
        trust_remote_code=chosen_base_setting("trust_remote_code", False),
        allow_pickle=chosen_base_setting("allow_pickle", False),
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    log:
        f"{L}/train_cpt.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/train_cpt.py"


rule train_sft:
    input:
        base=model_dir("cpt"),
        data=SFT_DATA,
        # The chosen base (already upstream of cpt): listed because trust_remote_code
        # is that candidate's setting, and a param may read a checkpoint only via an input.
        origin=chosen_base_dir,
    output:
        directory(model_dir("sft")),
    params:
        checkpoint_dir=checkpoint_dir("sft"),
        max_steps=config["sft"]["max_steps"],
        batch_size=config["sft"]["batch_size"],
        gradient_accumulation_steps=config["sft"]["gradient_accumulation_steps"],
        max_len=config["sft"]["max_len"],
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
        mem_mb=8000,
        runtime=120,
    log:
        f"{L}/train_sft.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/train_sft.py"
