"""Protobuf classes generated from proto/fedsilo/v1 by `make proto`; never edit by hand."""
