"""fl-sim: the server's own job loop and strategies with simulated clients in worker processes,
Ray actors or the driver itself; every message in its wire form, no sockets."""
