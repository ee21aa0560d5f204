"""Streaming stages between a source and a sink (compression, hashing)."""
