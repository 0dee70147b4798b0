"""`python -m edgeagent` is the `edgeagent` command."""

from .cli import main

main()
