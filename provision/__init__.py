"""fl-certs: provision a federation's mutual-TLS certificates (CA, server, one bundle per org)."""
