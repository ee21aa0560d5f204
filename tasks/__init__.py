"""Prefect tasks for seedvault: each a few lines of glue around one engine call or one streaming stage."""
