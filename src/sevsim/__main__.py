"""`python -m sevsim`."""

from sevsim.cli.fast import main

main()
