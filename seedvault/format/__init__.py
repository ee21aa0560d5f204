"""The on-storage format: object layout names, chunk framing, manifests (see FORMAT.md)."""
