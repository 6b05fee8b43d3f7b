"""`python -m pixelnet` runs the CLI."""

from pixelnet.cli import main

main()
