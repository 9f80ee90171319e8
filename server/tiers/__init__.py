"""The tiers and their engines: admission, the breaker, the supervisor, vLLM in process, remote replicas, an SMG gateway, and the prompt each renders."""
