"""Prefect flows for seedvault: backup-postgres, restore-postgres and dr-drill.

Flows take block *names* (never secrets) as parameters, load the blocks, and call the engine; the
streaming stages run as tasks (``tasks.stream``) inside a subflow that is retried as a whole.
"""
