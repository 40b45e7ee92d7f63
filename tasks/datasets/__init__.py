"""Real federated datasets, read from files installed beforehand; nothing is downloaded."""
