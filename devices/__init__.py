"""Device profiles (Raspberry Pi Zero 2 W … Pi 5, Jetson, x86-64): data and their model.

::

    profile = load_profile("pi4")                 # a built-in, or a user profile by name
    profile = load_profile("./my-board.yaml")     # any profile file
    profile.threads, profile.speed.fp32.value, profile.int8_dot_product

Built-in profiles are the YAML files in :data:`PROFILE_DIR`. User profiles are YAML files named
``<name>.yaml`` in the directories of ``$EDGEAGENT_PROFILES`` (separated by ``os.pathsep``), which
are searched first, like ``$PATH``: a user ``pi4.yaml`` replaces the built-in ``pi4``, which is
how a profile calibrated on the device takes effect. Any problem is a
:class:`~edgeagent.errors.ConfigError` naming the file, the line and the field.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..yamlconf import load_yaml_model
from .profile import SOURCED_FIELDS, DeviceProfile, Figure, SpeedFactors
from .speed import Estimate, estimate
from .speed_schema import (
    Calibration,
    PrecisionRates,
    ResidualStats,
    RuntimeFactor,
    SpeedModel,
)

__all__ = [
    "PROFILES_ENV",
    "PROFILE_DIR",
    "SOURCED_FIELDS",
    "Calibration",
    "DeviceProfile",
    "Estimate",
    "Figure",
    "PrecisionRates",
    "ResidualStats",
    "RuntimeFactor",
    "SpeedFactors",
    "SpeedModel",
    "estimate",
    "find_profile",
    "list_profiles",
    "load_profile",
    "user_profile_dirs",
]

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
"""The built-in profiles, one ``<name>.yaml`` each (package data)."""

PROFILES_ENV = "EDGEAGENT_PROFILES"
"""Environment variable: directories of user profiles, ``os.pathsep``-separated."""

_SUFFIXES = (".yaml", ".yml")


def user_profile_dirs() -> list[Path]:
    """The directories named by ``$EDGEAGENT_PROFILES``, in search order (empty entries skipped)."""
    raw = os.environ.get(PROFILES_ENV, "")
    return [Path(entry).expanduser() for entry in raw.split(os.pathsep) if entry.strip()]


def _is_path(name_or_path: str) -> bool:
    return (
        "/" in name_or_path
        or os.sep in name_or_path
        or (os.altsep is not None and os.altsep in name_or_path)
        or name_or_path.endswith(_SUFFIXES)
    )


def _files_in(folder: Path) -> dict[str, Path]:
    """``name -> file`` for the profile files in ``folder`` (``.yaml`` wins over ``.yml``)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for suffix in reversed(_SUFFIXES):
        for file in sorted(folder.glob(f"*{suffix}")):
            if file.is_file():
                found[file.stem] = file
    return found


def _profile_files(*, include_user: bool) -> dict[str, Path]:
    """Every profile name and the file it resolves to, user directories shadowing built-ins."""
    files = _files_in(PROFILE_DIR)
    if include_user:
        for folder in reversed(user_profile_dirs()):
            files.update(_files_in(folder))
    return files


def find_profile(name_or_path: str) -> Path:
    """The file a profile name (or path) stands for; :class:`ConfigError` if there is none."""
    if _is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such profile file")
        return path
    for folder in [*user_profile_dirs(), PROFILE_DIR]:
        for suffix in _SUFFIXES:
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    known = ", ".join(sorted(_profile_files(include_user=True))) or "(none)"
    searched = os.pathsep.join(str(d) for d in user_profile_dirs())
    hint = (
        f"; user profiles searched in {searched}"
        if searched
        else f"; add your own with a file path or ${PROFILES_ENV}"
    )
    raise ConfigError(f"unknown device profile {name_or_path!r}; known profiles: {known}{hint}")


def _load_file(path: Path, *, expected_name: str | None) -> DeviceProfile:
    profile = load_yaml_model(path, DeviceProfile)
    if expected_name is not None and profile.name != expected_name:
        raise ConfigError(
            f"{path}:{_line_of_key(path, 'name')}: name: {profile.name!r} does not match the file "
            f"name {path.name!r} (a profile found by name must be <name>.yaml)"
        )
    return profile


def _line_of_key(path: Path, key: str) -> int:
    """1-based line of a top-level ``key:`` in ``path`` (1 when it cannot be found)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith(f"{key}:"):
            return number
    return 1


def load_profile(name_or_path: str) -> DeviceProfile:
    """A profile by name (user directories, then built-ins) or from a YAML file path.

    Raises :class:`ConfigError` for an unknown name (the message lists the known ones) or an
    invalid file (the message names the file, the line and the field).
    """
    path = find_profile(name_or_path)
    return _load_file(path, expected_name=None if _is_path(name_or_path) else path.stem)


def list_profiles(*, include_user: bool = False) -> list[DeviceProfile]:
    """The built-in profiles sorted by name; with ``include_user``, as names resolve (user
    profiles from ``$EDGEAGENT_PROFILES`` added, shadowing built-ins of the same name)."""
    files = _profile_files(include_user=include_user)
    return [_load_file(files[name], expected_name=name) for name in sorted(files)]
