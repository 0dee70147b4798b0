"""The wheelhouse: every wheel a device needs to install edgeagent offline.

Wheels are fetched with ``pip download`` for the *device's* platform (``--platform`` with every
manylinux tag the device's glibc accepts, ``--python-version``, ``--only-binary=:all:``) into a
cache on the build machine, once. The set that pip resolved is written down in a lock file keyed by
the requirements and the platform, so the next build reuses exactly the same wheels: the bundle
stays reproducible until the user asks for ``--refresh-wheels``.

edgeagent's own wheel is built from the source tree it runs from, with its zip entries sorted and
timestamps fixed, so the same source gives the same bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .devicetool import file_sha256
from .errors import BundleError

#: Highest glibc per device Python: Debian 12 (bookworm, Python 3.11) has 2.36, Debian 13
#: (trixie, Python 3.13) 2.41.
GLIBC_FOR_PYTHON = {"3.11": 36, "3.12": 39, "3.13": 41}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_LOCK_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Platform:
    """What a device's wheels must fit: CPU architecture (``uname -m``) and Python version."""

    arch: str
    python: str = "3.11"

    @property
    def glibc_minor(self) -> int:
        return GLIBC_FOR_PYTHON.get(self.python, 36)

    def pip_platforms(self) -> list[str]:
        """Every platform tag pip should accept (pip does not widen ``--platform`` itself)."""
        arch = {"armv7l": "armv7l", "aarch64": "aarch64", "x86_64": "x86_64"}.get(self.arch)
        if arch is None:
            raise BundleError(f"no wheels for architecture {self.arch!r}")
        tags = [f"manylinux_2_{m}_{arch}" for m in range(self.glibc_minor, 16, -1)]
        if arch != "armv7l":
            tags.append(f"manylinux2014_{arch}")
        tags.append(f"linux_{arch}")
        return tags

    @property
    def abi(self) -> str:
        major, minor = self.python.split(".")[:2]
        return f"cp{major}{minor}"

    def describe(self) -> str:
        return f"{self.arch}, CPython {self.python}"


def default_cache() -> Path:
    env = os.environ.get("EDGEAGENT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeagent"


# edgeagent's own wheel -----------------------------------------------------------------------


def source_root() -> Path | None:
    """The source tree this edgeagent runs from (an editable install), if any."""
    import edgeagent

    here = Path(edgeagent.__file__).resolve().parent.parent
    pyproject = here / "pyproject.toml"
    if pyproject.is_file() and 'name = "edgeagent"' in pyproject.read_text():
        return here
    return None


def _tree_hash(root: Path) -> str:
    """A hash of everything that goes into the wheel (sources, package data, metadata)."""
    h = hashlib.sha256()
    names = ["pyproject.toml", "README.md"]
    for folder in ("agent", "devices", "models", "deploy", "simulator"):
        for p in sorted((root / folder).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                names.append(str(p.relative_to(root)))
    for name in names:
        p = root / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def normalize_wheel(src: Path, dest: Path) -> None:
    """Rewrite a wheel with sorted entries and fixed timestamps (same files, same RECORD)."""
    # A temporary name of this writer's own, then one rename: a reader never sees half a wheel
    # and two writers never write into one file.
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with zipfile.ZipFile(src) as zin:
            infos = sorted(zin.infolist(), key=lambda i: i.filename)
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
                for info in infos:
                    if info.is_dir():
                        continue
                    out = zipfile.ZipInfo(info.filename, date_time=_ZIP_DATE)
                    out.compress_type = zipfile.ZIP_DEFLATED
                    out.external_attr = (0o644 & 0xFFFF) << 16
                    zout.writestr(out, zin.read(info.filename), compresslevel=9)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def _sound_wheel(path: Path) -> bool:
    """True if ``path`` is a whole zip whose members all read back (CRCs checked)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One builder at a time per cache: pip builds in the source tree's own build/ folder, so
    two builds at once (two `bundle build`s, parallel tests) break each other."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def edgeagent_wheel(cache: Path, log: Callable[[str], None] = lambda _: None) -> Path:
    """edgeagent's wheel built from its source tree, cached by the tree's content."""
    root = source_root()
    if root is None:
        raise BundleError(
            "edgeagent is not installed from a source tree, so its wheel cannot be rebuilt; "
            "install it with `pip install -e .` from a checkout"
        )
    key = _tree_hash(root)[:16]
    wheels = cache / "edgeagent-wheels"
    folder = wheels / key
    with _locked(wheels):
        found = sorted(folder.glob("edgeagent-*.whl")) if folder.is_dir() else []
        if found and _sound_wheel(found[0]):
            return found[0]
        for broken in found:  # cut short by a crash or a full disk: built again
            log(f"rebuilding edgeagent's wheel: the cached {broken} is damaged")
            broken.unlink()
        return _build_edgeagent_wheel(root, folder, log)


def _build_edgeagent_wheel(root: Path, folder: Path, log: Callable[[str], None]) -> Path:
    log("building edgeagent's wheel from " + str(root))
    with tempfile.TemporaryDirectory(prefix="ea-wheel-") as tmp:
        env = dict(os.environ, SOURCE_DATE_EPOCH="315532800", PIP_DISABLE_PIP_VERSION_CHECK="1")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                tmp,
                str(root),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            check=False,
        )
        built = sorted(Path(tmp).glob("edgeagent-*.whl"))
        if proc.returncode != 0 or not built:
            raise BundleError(f"building edgeagent's wheel failed:\n{proc.stderr[-2000:]}")
        folder.mkdir(parents=True, exist_ok=True)
        normalize_wheel(built[0], folder / built[0].name)
    return folder / built[0].name


def wheel_requirements(wheel: Path, extras: Sequence[str]) -> list[str]:
    """The wheel's Requires-Dist lines that apply with these extras (markers kept for pip)."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = z.read(meta_name).decode()
    reqs: list[str] = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        spec, _, marker = req.partition(";")
        marker = marker.strip()
        if not marker:
            reqs.append(spec.strip())
            continue
        if marker.startswith("extra =="):
            extra = marker.split("==", 1)[1].strip().strip("'\"")
            if extra in extras:
                reqs.append(spec.strip())
    return sorted(set(reqs))


# third-party wheels --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wheel:
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


def _lock_key(requirements: Sequence[str], platform: Platform) -> str:
    blob = json.dumps(
        {
            "format": _LOCK_FORMAT,
            "reqs": sorted(requirements),
            "arch": platform.arch,
            "python": platform.python,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def resolve_wheels(
    requirements: Sequence[str],
    platform: Platform,
    cache: Path,
    *,
    refresh: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> list[Wheel]:
    """Download (once) the wheels that satisfy ``requirements`` on ``platform``.

    The resolved set is locked in ``cache/locks``; later builds reuse it unless ``refresh``.
    """
    wheels_dir = cache / "wheels"
    locks = cache / "locks"
    lock = locks / f"{_lock_key(requirements, platform)}.json"
    if lock.is_file() and not refresh:
        try:
            entries = json.loads(lock.read_text())["wheels"]
            found = [Wheel(wheels_dir / e["name"], e["sha256"]) for e in entries]
            if all(w.path.is_file() and file_sha256(w.path) == w.sha256 for w in found):
                return found
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged lock is resolved again
    if not requirements:
        return []
    log(f"downloading wheels for {platform.describe()}: {', '.join(requirements)}")
    wheels_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ea-dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"]
        cmd += ["--python-version", platform.python, "--implementation", "cp"]
        cmd += ["--abi", platform.abi, "--abi", "abi3", "--abi", "none"]
        for tag in platform.pip_platforms():
            cmd += ["--platform", tag]
        cmd += ["-d", tmp, *requirements]
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
            raise BundleError(
                f"cannot get wheels for {platform.describe()} ({', '.join(requirements)}):\n{tail}"
            )
        got: list[Wheel] = []
        for p in sorted(Path(tmp).iterdir()):
            if p.suffix != ".whl":
                raise BundleError(f"pip fetched {p.name}, which is not a wheel")
            dest = wheels_dir / p.name
            if not dest.exists():
                os.replace(p, dest)
            got.append(Wheel(dest, file_sha256(dest)))
    locks.mkdir(parents=True, exist_ok=True)
    body = {"wheels": [{"name": w.name, "sha256": w.sha256} for w in got]}
    tmp_lock = lock.with_suffix(".tmp")
    tmp_lock.write_text(json.dumps(body, indent=1, sort_keys=True))
    tmp_lock.replace(lock)
    return got
