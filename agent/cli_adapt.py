"""``edgeagent models adapt``: train a small LoRA adapter for one household (issue 15).

Placeholder registered by the lead; the adapters helper fills it in.
"""

from __future__ import annotations

import click


@click.command("adapt")
def adapt() -> None:
    """Train a LoRA adapter for a base model on a household's own phrasing (not built yet)."""
    raise click.ClickException("models adapt is not built yet")
