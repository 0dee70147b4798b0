"""The signed bundles an image carries on its boot partition, for one profile or a family.

One profile: ``edgeagent/bundle/`` is the bundle as ``edgeagent bundle build`` makes it
(``files/``, ``bundle.json``, ``bundle.json.minisig``). A family (``--device pi``): a bundle per
profile, their content files in the one shared ``edgeagent/bundle/files/`` (content-addressed:
the wheels, the config and the skill code are the same file for every profile, only the models
differ), each profile's signed manifest in ``edgeagent/bundle/profiles/PROFILE/``. The first-boot
installer reads the board's model and installs the matching one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..devices import DeviceProfile
from . import installer
from .bootpart import ImageBuildError

MANIFESTS = ("bundle.json", "bundle.json.minisig")


@dataclass(frozen=True, slots=True)
class Staged:
    """What was staged: per profile its release and signed manifest; the bytes of the shared
    content store (every profile's files, each once)."""

    releases: dict[str, str]
    manifests: dict[str, dict[str, Any]]
    store_bytes: int
    family: str | None

    @property
    def first(self) -> str:
        return next(iter(self.releases))

    def enrolment_profiles(self, profiles: Sequence[DeviceProfile]) -> dict[str, Any] | None:
        """The enrolment's ``profiles`` map (release and board-model substrings), or None for a
        single-profile image."""
        if self.family is None:
            return None
        match = {p.name: list(p.match) for p in profiles}
        return {n: {"release": v, "match": match[n]} for n, v in self.releases.items()}


def stage(
    config: Path,
    profiles: Sequence[DeviceProfile],
    family: str | None,
    dest: Path,
    work: Path,
    *,
    key: Path,
    python: str | None,
    cache: Path | None,
    log: Callable[[str], None],
) -> Staged:
    """Build the bundles for ``profiles`` from ``config`` into ``dest`` (``edgeagent/bundle``)."""
    from ..deploy import bundle as bundles
    from ..deploy.bundle import BuildOptions
    from ..deploy.errors import DeployError

    releases: dict[str, str] = {}
    manifests: dict[str, dict[str, Any]] = {}
    store = dest / "files"
    for p in profiles:
        out = dest if family is None else work / f"bundle-{p.name}"
        log(f"building the {p.name} bundle for Python {python}")
        try:
            built = bundles.build_bundle(
                config, p.name, out, key=key,
                options=BuildOptions(python=python, cache=cache, log=log),
            )  # fmt: skip
        except DeployError as exc:
            raise ImageBuildError(f"bundle for {p.name}: {exc}") from exc
        releases[p.name] = built.version
        manifests[p.name] = built.manifest
        if family is None:
            continue
        store.mkdir(parents=True, exist_ok=True)
        for f in sorted((out / "files").iterdir()):
            if not (store / f.name).exists():  # named by content: the same name is the same file
                shutil.move(f, store / f.name)
        folder = dest / installer.PROFILES / p.name
        folder.mkdir(parents=True)
        for name in MANIFESTS:
            shutil.copyfile(out / name, folder / name)
        shutil.rmtree(out)
    store_bytes = sum(f.stat().st_size for f in store.iterdir())
    return Staged(releases, manifests, store_bytes, family)
