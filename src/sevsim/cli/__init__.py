"""The `sevsim` command."""
