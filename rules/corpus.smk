# The domain corpus: ingest raw sources, clean them, split the domain reports
# into seeds and held-out text, select the corpus documents most similar to the
# seeds, and tokenise the selection into binary shards with a base's tokenizer.
#
# Selection is three steps so that a new cut never re-embeds:
#   fit_embedder (once: fitted state + seed embeddings)
#   -> embed_corpus (one job per part of the cleaned corpus, config corpus.parts.n)
#   -> select_domain (reads the cached embeddings; scores, cuts, reports).
# Only select_domain's params hold the cut, so changing corpus.select.method or
# value reruns select_domain alone.


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
        mem_mb=mem_mb(4000),
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
        dropped=CORPUS_DROPPED_SAMPLES,
    params:
        clean=config["corpus"]["clean"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
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
        mem_mb=mem_mb(1000),
        runtime=5,
    log:
        f"{L}/prepare_domain.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/prepare_domain.py"


rule fit_embedder:
    input:
        clean=CORPUS_CLEAN,
        seeds=DOMAIN_SEED,
    output:
        state=EMBEDDER_STATE,
        seeds=SEED_EMBEDDINGS,
    params:
        backend=config["corpus"]["select"]["backend"],
        model=config["corpus"]["select"]["model"],
        svd_dim=config["corpus"]["select"]["svd_dim"],
        fit_docs=config["corpus"]["select"]["fit_docs"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
        gpu=EMBED_GPU,
    log:
        f"{L}/fit_embedder.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/fit_embedder.py"


rule embed_corpus:
    input:
        clean=CORPUS_CLEAN,
        state=EMBEDDER_STATE,
    output:
        embeddings=f"{R}/corpus/embeddings/{{part}}.npy",
        ids=f"{R}/corpus/embeddings/{{part}}.ids.parquet",
    threads: 1
    resources:
        mem_mb=mem_mb(8000),
        runtime=120,
        gpu=EMBED_GPU,
    log:
        f"{L}/embed_corpus/{{part}}.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/embed_corpus.py"


rule select_domain:
    input:
        clean=CORPUS_CLEAN,
        seeds=SEED_EMBEDDINGS,
        embeddings=part_embeddings,
        ids=part_ids,
        state=EMBEDDER_STATE,
    output:
        selected=CORPUS_SELECTED,
        report=CORPUS_SELECTION,
        histogram=report(
            CORPUS_SELECTION_HIST,
            caption="../report/selection_hist.rst",
            category="1. Corpus",
            subcategory="Domain selection",
        ),
        markdown=CORPUS_SELECTION_REPORT,
    params:
        score=config["corpus"]["select"]["score"],
        topk=config["corpus"]["select"]["topk"],
        method=config["corpus"]["select"]["method"],
        value=config["corpus"]["select"]["value"],
    threads: 1
    resources:
        mem_mb=mem_mb(8000),
        runtime=30,
    log:
        f"{L}/select_domain.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/select_domain.py"


# Each backend against human similarity judgements (JSTS). It needs no corpus and
# is on no other rule's path: a low priority lets it fill an idle core instead of
# delaying ingest_corpus, which the whole chain waits for.
rule check_embeddings:
    input:
        jsts=config["corpus"]["select"]["check"]["path"],
    output:
        CORPUS_EMBED_CHECK,
    priority: -10
    params:
        backends=config["corpus"]["select"]["check"]["backends"],
        max_pairs=config["corpus"]["select"]["check"]["max_pairs"],
        model=config["corpus"]["select"]["model"],
        svd_dim=config["corpus"]["select"]["svd_dim"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
        gpu=CHECK_GPU,
    log:
        f"{L}/check_embeddings.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/check_embeddings.py"


rule write_shards:
    input:
        selected=CORPUS_SELECTED,
        tokenizer=tokenizer_base_dir,
    output:
        directory(f"{R}/shards/{{tokenizer}}"),
    params:
        tokens_per_shard=config["corpus"]["shards"]["tokens_per_shard"],
        validation_fraction=config["corpus"]["shards"]["validation_fraction"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=60,
    log:
        f"{L}/write_shards/{{tokenizer}}.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/write_shards.py"
