"""The fl-server daemon: gRPC service, job state machine, strategies, run files."""
