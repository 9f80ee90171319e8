"""Generated gRPC stubs for router.v1 (from proto/router.proto via `make proto`)."""
