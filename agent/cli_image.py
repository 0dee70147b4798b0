"""The `image` command group: device images that boot as enrolled objects (docs/images.md)."""

from __future__ import annotations

import click

from .cli_image_build import build
from .cli_image_flash import flash


@click.group()
def image() -> None:
    """Make SD-card images that boot as enrolled, working objects, and write them safely.

    `image build --base FILE.img` customises a Raspberry Pi OS image's boot partition (first-boot
    setup, the device's signed bundle, its enrolment); `image flash` writes an image to a card or
    disk with checks and read-back verification. See docs/images.md.
    """


image.add_command(build)
image.add_command(flash)
