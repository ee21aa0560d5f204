"""seedvault: streaming, encrypted, tamper-evident backups."""

__version__ = "0.2.0"
