"""Storage adapters behind the ports in tuneplane.ports (SQLite + directory locally; Azure Table + Blob)."""
