# Evaluation: human-feedback pairs -> a learned evaluator; per model version
# JCommonsenseQA, domain bits per character, chrF against references and the
# evaluator's score of its answers; then one table over all versions
# (results/eval/metrics.json is what `dvc metrics diff` compares).


rule prepare_feedback:
    input:
        paths=config["data"]["feedback"]["paths"],
    output:
        train=FEEDBACK_TRAIN,
        test=FEEDBACK_TEST,
    params:
        max_pairs=config["data"]["feedback"]["max_pairs"],
        test_fraction=config["data"]["feedback"]["test_fraction"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    log:
        f"{L}/prepare_feedback.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/prepare_feedback.py"


# One job per entry of evaluate.evaluators (lightgbm, bert), each writing its folder
# with metrics.json, test_scores.parquet and model_card.md.
rule train_evaluator:
    input:
        unpack(train_evaluator_inputs),
    output:
        directory(f"{R}/evaluators/{{evaluator}}"),
    wildcard_constraints:
        evaluator=TRAINED_EVALUATOR_NAMES,
    params:
        kind=evaluator_type,
        options=evaluator_options,
        seed=config["seed"],
    # LightGBM gets one thread (its models do not depend on the machine); bert two.
    threads: evaluator_threads
    resources:
        gpu=trained_evaluator_gpu,
        mem_mb=evaluator_mem_mb,
        runtime=evaluator_runtime,
    log:
        f"{L}/train_evaluator/{{evaluator}}.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/train_evaluator.py"


rule evaluate_version:
    input:
        model=version_model_dir,
        generations=f"{R}/generations/{{version}}.parquet",
        # Task (elyza, jsquad) and reference answers of every generation.
        prompts=EVAL_PROMPTS,
        domain=DOMAIN_HELDOUT,
        jcqa=config["data"]["jcqa"]["path"],
        evaluator=EVALUATOR_DIR,
        # The chosen base: trust_remote_code is its setting (see quantize_gptq).
        origin=chosen_base_dir,
    output:
        record=f"{R}/eval/versions/{{version}}.json",
        item_scores=f"{R}/eval/versions/{{version}}.items.parquet",
    params:
        jcqa_max_items=config["data"]["jcqa"]["max_items"],
        # The window base selection used, so bits per character compare across stages.
        ppl_seq_len=config["base"]["selection"]["ppl_seq_len"],
        tokenize=config["evaluate"]["metrics"]["tokenize"],
        trust_remote_code=chosen_base_setting("trust_remote_code", False),
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    log:
        f"{L}/evaluate_version/{{version}}.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/evaluate_version.py"


rule eval_table:
    input:
        expand(f"{R}/eval/versions/{{version}}.json", version=VERSIONS),
    output:
        table=EVAL_TABLE,
        table_md=f"{R}/eval/table.md",
        metrics=f"{R}/eval/metrics.json",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        f"{L}/eval_table.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/eval_table.py"
