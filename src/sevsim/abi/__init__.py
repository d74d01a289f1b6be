"""Byte-exact formats and constants from AMD's specifications; no behaviour, no sevsim imports."""
