# Base-model selection: build (or copy) every candidate, score each on the
# domain and on Japanese commonsense multiple choice, rank them and choose one.
# select_base is a checkpoint: training reads its chosen.json (chosen_base()).


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
        mem_mb=4000,
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
        jcqa=config["data"]["jcqa"]["path"],
    output:
        f"{R}/selection/scores/{{candidate}}.json",
    params:
        jcqa_max_items=config["data"]["jcqa"]["max_items"],
        ppl_seq_len=config["base"]["selection"]["ppl_seq_len"],
        trust_remote_code=candidate_setting("trust_remote_code", False),
        allow_pickle=candidate_setting("allow_pickle", False),
    threads: 1
    resources:
        mem_mb=4000,
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
        table_md=f"{R}/selection/table.md",
        chosen=CHOSEN,
    params:
        weights=config["base"]["selection"]["weights"],
        choose=config["base"]["choose"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        f"{L}/select_base.log",
    conda:
        "../envs/train.yaml"
    script:
        "../scripts/select_base.py"
