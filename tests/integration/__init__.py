"""Integration tests: real servers (PostgreSQL clusters started by seedvault itself)."""
