"""Corpus stage: ingest raw sources, clean, select domain-like text, tokenise into shards.

Modules (each imports its heavy libraries lazily):
    readers          streaming readers registered by format (mediawiki, jsonl, json, parquet,
                     text_dir, hf_dataset); dumps parsed without DTDs or entity expansion
    wikitext         wiki markup to clean text
    ingest           ``ingest_corpus``: sources -> docs.parquet + docs_stats.json
    quality          language by script, Gopher/C4-style quality filters (ja and en)
    dedup            MinHash LSH near-duplicate removal over character n-grams
    clean            ``clean_corpus``: normalisation, filters, exact and near dedup ->
                     clean.parquet + stats.json + dropped_samples.jsonl
    embed            embedding backends registered by name (tfidf-svd, sentence-transformers)
    parts            ``fit_embedder`` / ``embed_corpus``: one fitted embedder, per-part caches
    select           ``select_domain``: cosine to the domain seeds, cut -> selected.parquet
    report           score histogram and top/bottom documents of a selection
    embedding_check  Spearman of each backend's cosine with JSTS human similarity
    shards           ``write_shards`` / ``load_tokens`` / ``TokenBlocks``: fixed-size
                     train/validation token shards with a checksummed manifest
"""
