"""Post-training quantisation (GPTQ with llm-compressor, compressed-tensors output)."""
