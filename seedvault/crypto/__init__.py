"""Cryptography: AEAD chunks, master/data keys, and the legacy openssl reader."""
