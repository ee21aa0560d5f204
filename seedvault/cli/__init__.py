"""The seedvault command line (typer + rich): thin over seedvault.ops."""
