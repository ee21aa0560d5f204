"""Scheduled seedvault deployments: nightly full backup, monthly DR drill (see ``definitions`` and prefect.yaml)."""
