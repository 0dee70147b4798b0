"""``edgeagent data …``: the data loop, hard cases kept on devices and pulled into a dataset
(issue 15).

Placeholder registered by the lead; the data-loop helper fills it in.
"""

from __future__ import annotations

import click


@click.group("data")
def data() -> None:
    """Collect the hard cases devices kept into a dataset (not built yet)."""
