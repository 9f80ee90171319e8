"""The front doors: gRPC and OpenAI-compatible HTTP, their interceptors and credentials, and the one call outcome both share."""
