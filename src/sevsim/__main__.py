"""`python -m sevsim`."""

from sevsim.cli.main import main

main()
