# Evaluation: human-feedback pairs -> a learned evaluator; per model version
# JCommonsenseQA, domain bits per character, chrF against references and the
# evaluator's score of its answers; the LLM judge; every evaluator validated against
# people; then one table over all versions with bootstrap intervals and plots
# (results/eval/metrics.json is what `dvc metrics diff` compares).

VALIDATION = config["evaluate"]["validation"]
VALIDATION_THRESHOLDS = (
    "min_auc",
    "min_paired_accuracy",
    "max_ece",
    "min_coverage",
    "max_position_flip_rate",
)


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
        mem_mb=mem_mb(2000),
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
        mem_mb=mem_mb(4000),
        runtime=60,
    log:
        f"{L}/evaluate_version/{{version}}.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/evaluate_version.py"


rule prepare_judge:
    input:
        model=judge_model_input,
        origin=judge_origin,
        templates=list(JUDGE["templates"].values()),
    output:
        directory(JUDGE_DIR),
    params:
        model=judge_model,
        templates=JUDGE["templates"],
        backend=JUDGE["backend"],
        chat=JUDGE["chat"],
        top_logprobs=JUDGE["top_logprobs"],
        batch_size=JUDGE["batch_size"],
        max_field_chars=JUDGE["max_field_chars"],
        tokenizer=JUDGE["tokenizer"],
        trust_remote_code=judge_trust_remote_code,
        openai=JUDGE["openai"],
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    log:
        f"{L}/prepare_judge.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/prepare_judge.py"


# One registered evaluator (trained or the judge) scores one version's answers, as
# evaluate.scores lists; eval_table turns the scores into columns with intervals.
rule score_answers:
    input:
        evaluator=evaluator_folder,
        generations=f"{R}/generations/{{version}}.parquet",
    output:
        f"{R}/eval/scores/{{evaluator}}/{{version}}.parquet",
    threads: 1
    resources:
        gpu=evaluator_gpu,
        mem_mb=mem_mb(4000),
        runtime=30,
    log:
        f"{L}/score_answers/{{evaluator}}/{{version}}.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/score_answers.py"


# Every evaluator against held-out human judgements: is it fit to drive decisions?
rule validate_evaluators:
    input:
        evaluators=list(evaluator_dirs().values()),
        feedback=FEEDBACK_TEST,
        generations=version_generations,
        graded=VALIDATION["graded"]["path"] or [],
    output:
        md=VALIDATION_MD,
        json=VALIDATION_JSON,
        summary=VALIDATION_METRICS,
    params:
        names=list(evaluator_dirs()),
        thresholds={k: VALIDATION[k] for k in VALIDATION_THRESHOLDS},
        judge_max_pairs=VALIDATION["judge_max_pairs"],
        graded_max_pairs=VALIDATION["graded"]["max_pairs"],
        n_boot=config["evaluate"]["n_boot"],
        seed=config["seed"],
    threads: 1
    resources:
        gpu=JUDGE_GPU,
        mem_mb=mem_mb(4000),
        runtime=60,
    log:
        f"{L}/validate_evaluators.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/validate_evaluators.py"


rule eval_table:
    input:
        records=version_records,
        item_scores=version_item_scores,
        scores=score_files,
    output:
        table=EVAL_TABLE,
        table_md=f"{R}/eval/table.md",
        table_html=report(
            f"{R}/eval/table.html",
            caption="../report/eval_table.rst",
            category="5. Evaluation",
            subcategory="Table",
        ),
        metrics=f"{R}/eval/metrics.json",
        plot_metrics=report(
            f"{EVAL_PLOTS}/metrics_by_version.png",
            caption="../report/metrics_by_version.rst",
            category="5. Evaluation",
            subcategory="Plots",
        ),
        plot_scores=report(
            f"{EVAL_PLOTS}/score_distributions.png",
            caption="../report/score_distributions.rst",
            category="5. Evaluation",
            subcategory="Plots",
        ),
    params:
        n_boot=config["evaluate"]["n_boot"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    log:
        f"{L}/eval_table.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../scripts/eval_table.py"
