"""Storage drivers: dumb blob stores behind one small interface (see base.py)."""
