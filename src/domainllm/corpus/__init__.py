"""Corpus stage: ingest raw sources, clean, select domain-like text, tokenise into shards.

Modules (each imports its heavy libraries lazily):
    readers   streaming readers registered by format (mediawiki, jsonl, json, parquet)
    wikitext  wiki markup to clean text
    ingest    ``ingest_corpus``: sources -> docs.parquet + docs_stats.json
    clean     ``clean_corpus``: normalisation, quality filters, dedup -> clean.parquet + stats.json
    embed     embedding backends registered by name (tfidf-svd, sentence-transformers)
    select    ``select_domain``: similarity to the domain seeds -> selected.parquet + selection.json
    shards    ``write_shards`` / ``load_tokens``: binary token shards with a manifest
"""
