"""Build tooling run by `make models`: prepares the model folders the server
loads. Not part of the runtime package, and not installed."""
