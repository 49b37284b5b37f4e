"""`python -m taskyard` runs the CLI."""

from .cli import main

main()
