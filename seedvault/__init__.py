"""seedvault: streaming, encrypted, tamper-evident backups."""

__version__ = "0.1.0"
