"""Prefect layer: thin over the seedvault engine (filled by later issues)."""
