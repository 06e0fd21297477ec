"""kaos: the client (CLI + HTTP client) and the embedded local stack."""
