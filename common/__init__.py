"""Shared by the server and the client: wire contract, tensor codec, config, logging, tasks."""
