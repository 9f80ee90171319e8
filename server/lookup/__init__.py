"""Answers found instead of generated, and context found for a prompt: the caches, retrieval, the sentence embedder."""
