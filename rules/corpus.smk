# The domain corpus: ingest raw sources, clean them, split the domain reports
# into seeds and held-out text, select the corpus documents most similar to the
# seeds, and tokenise the selection into binary shards with a base's tokenizer.


rule ingest_corpus:
    input:
        source_paths(),
    output:
        docs=CORPUS_DOCS,
        stats=f"{R}/corpus/docs_stats.json",
    params:
        sources=config["corpus"]["sources"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        f"{L}/ingest_corpus.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/ingest_corpus.py"


rule clean_corpus:
    input:
        docs=CORPUS_DOCS,
    output:
        clean=CORPUS_CLEAN,
        stats=CORPUS_STATS,
    params:
        min_chars=config["corpus"]["clean"]["min_chars"],
        max_chars=config["corpus"]["clean"]["max_chars"],
        max_symbol_ratio=config["corpus"]["clean"]["max_symbol_ratio"],
        max_duplicate_line_fraction=config["corpus"]["clean"]["max_duplicate_line_fraction"],
        dedup=config["corpus"]["clean"]["dedup"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        f"{L}/clean_corpus.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/clean_corpus.py"


rule prepare_domain:
    input:
        path=config["data"]["domain"]["path"],
    output:
        seed=DOMAIN_SEED,
        heldout=DOMAIN_HELDOUT,
    params:
        seed_docs=config["data"]["domain"]["seed_docs"],
        heldout_docs=config["data"]["domain"]["heldout_docs"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        f"{L}/prepare_domain.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/prepare_domain.py"


rule select_domain:
    input:
        clean=CORPUS_CLEAN,
        seeds=DOMAIN_SEED,
    output:
        selected=CORPUS_SELECTED,
        report=f"{R}/corpus/selection.json",
    params:
        backend=config["corpus"]["select"]["backend"],
        model=config["corpus"]["select"]["model"],
        svd_dim=config["corpus"]["select"]["svd_dim"],
        score=config["corpus"]["select"]["score"],
        topk=config["corpus"]["select"]["topk"],
        method=config["corpus"]["select"]["method"],
        value=config["corpus"]["select"]["value"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        # Only the sentence-transformers backend uses a GPU; tfidf-svd ignores it.
        gpu=1 if config["corpus"]["select"]["backend"] == "sentence-transformers" else 0,
    log:
        f"{L}/select_domain.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/select_domain.py"


rule write_shards:
    input:
        selected=CORPUS_SELECTED,
        tokenizer=tokenizer_base_dir,
    output:
        directory(f"{R}/shards/{{tokenizer}}"),
    params:
        tokens_per_shard=config["corpus"]["shards"]["tokens_per_shard"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        f"{L}/write_shards/{{tokenizer}}.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/write_shards.py"
