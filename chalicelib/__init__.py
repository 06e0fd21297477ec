"""Domain, services and AWS adapters shared by the API and every task Lambda (never imports chalice)."""
