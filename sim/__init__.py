"""fl-sim: the server's own job loop and strategies with in-process clients (no sockets)."""
