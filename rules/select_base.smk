# Base-model selection: build (or copy) every candidate, score each on its
# tokenizer's efficiency, sliding-window perplexity of held-out domain text and
# the multiple-choice task files (base.selection.tasks), rank them by the
# weighted metrics and choose one (docs/selection.md). select_base is a
# checkpoint: training reads its chosen.json (chosen_base()), unless base.choose
# names a candidate.


rule build_base:
    input:
        unpack(base_build_input),
    output:
        directory(base_dir("{candidate}")),
    params:
        spec=candidate_setting("build"),
        source=candidate_setting("source"),
        trust_remote_code=candidate_setting("trust_remote_code", False),
        allow_pickle=candidate_setting("allow_pickle", False),
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    log:
        f"{L}/build_base/{{candidate}}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/build_base.py"


rule score_base:
    input:
        model=base_dir("{candidate}"),
        domain=DOMAIN_HELDOUT,
        corpus=CORPUS_SELECTED,
        tasks=TASK_FILES,
        task_data=TASK_DATA,
    output:
        f"{R}/selection/scores/{{candidate}}.json",
    params:
        tasks=TASK_FILES,
        max_items=config["base"]["selection"]["max_items"],
        ppl_seq_len=config["base"]["selection"]["ppl_seq_len"],
        ppl_stride=config["base"]["selection"]["ppl_stride"],
        corpus_max_docs=config["base"]["selection"]["corpus_max_docs"],
        seed=config["seed"],
        trust_remote_code=candidate_setting("trust_remote_code", False),
        allow_pickle=candidate_setting("allow_pickle", False),
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    log:
        f"{L}/score_base/{{candidate}}.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/score_base.py"


checkpoint select_base:
    input:
        scores=expand(f"{R}/selection/scores/{{candidate}}.json", candidate=CANDIDATES),
    output:
        table=SELECTION_TABLE,
        table_md=report(
            f"{R}/selection/table.md",
            caption="../report/selection_table.rst",
            category="2. Base selection",
            subcategory="Ranking",
        ),
        chosen=CHOSEN,
    params:
        weights=config["base"]["selection"]["weights"],
        choose=config["base"]["choose"],
        max_lost_char_rate=config["base"]["selection"]["max_lost_char_rate"],
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=5,
    log:
        f"{L}/select_base.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/select_base.py"
