"""Built-in tasks: usable with no user code and no downloads."""
