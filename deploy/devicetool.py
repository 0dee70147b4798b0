"""The device side of a deploy: a standard-library-only tool copied to the device.

It runs as ``python3 /opt/edgeagent/bin/edgeagent-device.py [--root DIR] COMMAND`` over SSH and
prints one JSON object on stdout (``{"error": ...}`` and exit status 2 when it refuses). It needs
only ``python3`` and, to check Ed25519 signatures without the ``cryptography`` package, the
``openssl`` command. Layout under the root (default ``/opt/edgeagent``)::

    bin/                       this tool and its signature checker
    keys/*.pub                 trusted signing keys (minisign public keys; several = rotation)
    device.json                what the device is: agent id, profile, service kind, user
    store/<sha256>             content files, named by hash (uploaded only when missing)
    envs/<env-id>/             virtual environments, one per set of wheels (shared by releases)
    releases/<version>/        bundle.json(+.minisig), app/ (config, skill modules, models),
                               release.env, venv -> ../../envs/<env-id>
    current -> releases/<v>    the running release (switched atomically with rename)
    previous -> releases/<v>   the release before it (rollback target)
    pending.json               a switch not yet confirmed healthy; undone if never confirmed
    history.jsonl              what happened, newest last (bounded)

Nothing here trusts the files it is given: the signature over ``bundle.json`` is checked against
the trusted keys, then every file's size and SHA-256, the platform and the profile, all before
anything is installed.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BUNDLE_FORMAT = 1
BUNDLE_KIND = "edgeagent-bundle"
DEFAULT_ROOT = "/opt/edgeagent"
HISTORY_KEPT = 500
MAX_BUNDLE_JSON = 4 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_ROLES = {"config", "app", "model", "wheel"}


class Refused(Exception):
    """The tool refuses: the message says which file and why."""


# Bundle checks (shared with the build machine's `edgeagent bundle verify`) --------------------


def check_manifest(raw: bytes) -> dict[str, Any]:
    """Parse ``bundle.json`` and check its shape; paths must stay inside the release."""
    if len(raw) > MAX_BUNDLE_JSON:
        raise Refused(f"bundle.json: {len(raw)} bytes, more than {MAX_BUNDLE_JSON}")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise Refused(f"bundle.json: not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != BUNDLE_KIND:
        raise Refused("bundle.json: not an edgeagent bundle manifest")
    if data.get("format") != BUNDLE_FORMAT:
        raise Refused(
            f"bundle.json: format {data.get('format')!r}; this tool reads format {BUNDLE_FORMAT}"
        )
    version = data.get("version")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise Refused(f"bundle.json: bad release version {version!r}")
    for key in ("device", "profile"):
        if not isinstance(data.get(key), str) or not _NAME.fullmatch(data[key]):
            raise Refused(f"bundle.json: bad {key} {data.get(key)!r}")
    plat = data.get("platform")
    if not isinstance(plat, dict) or not all(
        isinstance(plat.get(k), str) for k in ("arch", "python")
    ):
        raise Refused("bundle.json: platform must name arch and python")
    files = data.get("files")
    if not isinstance(files, list) or not files:
        raise Refused("bundle.json: no files")
    seen = _check_file_entries(files)
    config = data.get("config")
    if not isinstance(config, str) or config not in seen:
        raise Refused(f"bundle.json: config {config!r} is not one of its files")
    env = data.get("env")
    if not isinstance(env, str) or not _HEX64.fullmatch(env):
        raise Refused("bundle.json: bad env id")
    return data


def _check_file_entries(files: list[Any]) -> set[str]:
    """Check the manifest's file list (safe, unique paths; hash, size, role); its paths."""
    seen: set[str] = set()
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise Refused(f"bundle.json: files[{i}] is not an object")
        path, digest, size, role = f.get("path"), f.get("sha256"), f.get("size"), f.get("role")
        if not isinstance(path, str) or not _safe_path(path):
            raise Refused(f"bundle.json: files[{i}]: unsafe path {path!r}")
        if path in seen:
            raise Refused(f"bundle.json: {path} listed twice")
        seen.add(path)
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise Refused(f"bundle.json: {path}: bad sha256")
        if not isinstance(size, int) or size < 0:
            raise Refused(f"bundle.json: {path}: bad size")
        if role not in _ROLES:
            raise Refused(f"bundle.json: {path}: unknown role {role!r}")
    return seen


def _safe_path(path: str) -> bool:
    parts = path.split("/")
    return (
        0 < len(path) <= 512
        and not path.startswith("/")
        and all(p not in ("", ".", "..") for p in parts)
        and parts[0] in ("app", "wheels")
        and "\\" not in path
        and "\0" not in path
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_files(data: dict[str, Any], store: Path) -> None:
    """Every listed file is present in ``store`` (named by hash) with its size and hash."""
    for f in data["files"]:
        p = store / f["sha256"]
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise Refused(f"{f['path']}: missing (content {f['sha256'][:12]}…)") from None
        if size != f["size"]:
            raise Refused(f"{f['path']}: {size} bytes, bundle.json says {f['size']} (half-copied?)")
        if file_sha256(p) != f["sha256"]:
            raise Refused(f"{f['path']}: SHA-256 differs from bundle.json (tampered or damaged)")


def _remote_verify() -> Any:
    """The signature checker: beside this module in the package, or beside this file on a
    device (where the two files are copied alone)."""
    try:
        from . import remote_verify
    except ImportError:
        import remote_verify  # type: ignore[no-redef,import-not-found]
    return remote_verify


def check_signature(raw: bytes, sig_text: str, key_texts: list[str]) -> tuple[str, str]:
    if not key_texts:
        raise Refused("no trusted signing keys installed (keys/*.pub)")
    remote_verify = _remote_verify()
    try:
        key_id, comment = remote_verify.verify_file_signature(raw, sig_text, key_texts)
    except ValueError as exc:
        raise Refused(f"bundle.json.minisig: {exc}") from exc
    return str(key_id), str(comment)


# The device --------------------------------------------------------------------------------


class Device:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "store"
        self.releases = root / "releases"
        self.envs = root / "envs"
        self.keys = root / "keys"
        self.incoming = root / "incoming"

    # state ---------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / "device.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def link(self, name: str) -> str | None:
        try:
            return os.readlink(self.root / name).rsplit("/", 1)[-1]
        except OSError:
            return None

    def set_link(self, name: str, version: str | None) -> None:
        dest = self.root / name
        if version is None:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            return
        tmp = self.root / f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"releases/{version}", tmp)
        os.replace(tmp, dest)  # rename(2): the switch is atomic
        _fsync_dir(self.root)

    def pending(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / "pending.json").read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def release_versions(self) -> list[str]:
        if not self.releases.is_dir():
            return []
        out = []
        for p in self.releases.iterdir():
            if not p.name.startswith(".") and (p / "bundle.json").is_file():
                out.append(p)
        out.sort(key=lambda p: p.stat().st_mtime)
        return [p.name for p in out]

    def record(self, event: str, **fields: Any) -> None:
        path = self.root / "history.jsonl"
        line = json.dumps({"ts": round(time.time(), 3), "event": event, **fields}) + "\n"
        lines: list[str] = []
        with contextlib.suppress(OSError):
            lines = path.read_text().splitlines(keepends=True)[-(HISTORY_KEPT - 1) :]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(lines) + line)
        os.replace(tmp, path)

    def history(self, limit: int) -> list[dict[str, Any]]:
        try:
            lines = (self.root / "history.jsonl").read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines[-limit:]:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Refused("another deploy to this device is in progress") from None
            yield
        finally:
            os.close(fd)

    # service -------------------------------------------------------------------------------

    def service_kind(self) -> str:
        return str(self.info().get("service", "systemd"))

    def unit(self) -> str:
        return f"edgeagent@{self.info().get('device', 'agent')}.service"

    def restart(self) -> None:
        if self.service_kind() == "systemd":
            _run(["systemctl", "restart", self.unit()])
        else:
            self._process_stop()
            self._process_start()

    def stop_service(self) -> None:
        if self.service_kind() == "systemd":
            _run(["systemctl", "stop", self.unit()], check=False)
        else:
            self._process_stop()

    def _pidfile(self) -> Path:
        return self.root / "run" / "agent.pid"

    def _process_stop(self) -> None:
        try:
            pid = int(self._pidfile().read_text())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                os.killpg(pid, 0)
                time.sleep(0.05)
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self._pidfile().unlink()

    def _process_start(self) -> None:
        cur = self.root / "current"
        env = dict(os.environ)
        env.update(_read_env(cur / "release.env"))
        log = self.root / "log" / "agent.log"
        log.parent.mkdir(exist_ok=True)
        self._pidfile().parent.mkdir(exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(cur / "venv" / "bin" / "edgeagent"), "agent", "run", "agent.yaml"],
                cwd=cur / "app",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self._pidfile().write_text(str(proc.pid))

    def logs(self, lines: int) -> str:
        if self.service_kind() == "systemd":
            proc = subprocess.run(
                ["journalctl", "-u", self.unit(), "-n", str(lines), "--no-pager", "-o", "cat"],
                capture_output=True,
                text=True,
                check=False,
            )
            return proc.stdout
        try:
            text = (self.root / "log" / "agent.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep and k.strip() and not k.startswith("#"):
                out[k.strip()] = v.strip()
    return out


def _run(cmd: list[str], *, check: bool = True, timeout: float = 600) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise Refused(f"{cmd[0]}: not found on the device") from exc
    except subprocess.TimeoutExpired as exc:
        raise Refused(f"{' '.join(cmd)}: no answer in {timeout:g} s") from exc
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise Refused(f"{' '.join(cmd[:3])}… failed (exit {proc.returncode}): {tail}")
    return proc.stdout


# Commands ----------------------------------------------------------------------------------


def cmd_probe(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """What the build machine needs to know before it sends anything."""
    os_release = _read_env(Path("/etc/os-release"))
    model = ""
    with contextlib.suppress(OSError):
        model = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace")
    features: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Features", "flags"):
                features = value.split()
                break
    probe_dir = dev.root if dev.root.exists() else dev.root.parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    usage = shutil.disk_usage(probe_dir)
    tool = Path(__file__).resolve()
    return {
        "arch": platform.machine(),
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "os": {k: os_release.get(k, "") for k in ("ID", "VERSION_ID", "PRETTY_NAME")},
        "model": model,
        "cpu_features": features[:64],
        "free_bytes": usage.free,
        "uid": os.getuid(),
        "systemd": Path("/run/systemd/system").is_dir(),
        "venv": _has_venv(),
        "openssl": shutil.which("openssl") is not None,
        "tool_sha256": file_sha256(tool) if tool.is_file() else None,
        "root": str(dev.root),
        "installed": (dev.root / "device.json").is_file(),
        "device": dev.info(),
        "current": dev.link("current"),
        "previous": dev.link("previous"),
        "pending": dev.pending(),
        "releases": dev.release_versions(),
        "envs": sorted(p.name for p in dev.envs.iterdir()) if dev.envs.is_dir() else [],
        "store": _store_listing(dev),
        "trusted_keys": sorted(p.stem for p in dev.keys.glob("*.pub")) if dev.keys.is_dir() else [],
    }


#: Past this many content files the probe does not list them (the deploy asks with `have`).
STORE_LISTED = 20000


def _store_listing(dev: Device) -> list[str] | None:
    if not dev.store.is_dir():
        return []
    names: list[str] = []
    with os.scandir(dev.store) as it:
        for entry in it:
            if len(names) >= STORE_LISTED:
                return None
            if _HEX64.fullmatch(entry.name):
                names.append(entry.name)
    return sorted(names)


def _has_venv() -> bool:
    try:
        import ensurepip  # noqa: F401
        import venv  # noqa: F401
    except ImportError:
        return False
    return True


def _input(args: argparse.Namespace) -> str:
    """A command's input: given with the request under `serve`, else standard input."""
    given = getattr(args, "input", None)
    return given if isinstance(given, str) else sys.stdin.read()


def cmd_have(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Which of the hashes on stdin are missing from the store (one per line)."""
    missing = []
    for line in _input(args).split():
        if not _HEX64.fullmatch(line):
            raise Refused(f"not a SHA-256: {line[:80]!r}")
        p = dev.store / line
        if not p.is_file():
            missing.append(line)
    return {"missing": missing}


_UNIT = """\
# Installed by `edgeagent deploy`; one instance per agent: edgeagent@DEVICE.service
[Unit]
Description=edgeagent device agent %i
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
EnvironmentFile=-{root}/current/release.env
WorkingDirectory={root}/current/app
ExecStartPre=+/bin/sh -c {precheck}
ExecStart={root}/current/venv/bin/edgeagent agent run agent.yaml
Restart=on-failure
RestartSec=2
TimeoutStopSec=20
KillSignal=SIGTERM
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=no
ProtectSystem=strict
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
SystemCallArchitectures=native
StateDirectory=edgeagent/%i
CapabilityBoundingSet=
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
"""


_APPLY_PATH = """\
# Installed by `edgeagent deploy`: apply what agent %i asks for (system.update and friends)
[Unit]
Description=edgeagent: requests of agent %i

[Path]
PathExists=/var/lib/edgeagent/%i/spool/request.json

[Install]
WantedBy=paths.target
"""

_APPLY_SERVICE = """\
# Installed by `edgeagent deploy`: checks and applies agent %i's request (root: it installs)
[Unit]
Description=edgeagent: apply a request of agent %i

[Service]
Type=oneshot
ExecStart={python} -S {root}/bin/edgeagent-device.py --root {root} \\
    apply --spool /var/lib/edgeagent/%i/spool
"""


# The unit's pre-start check, in shell (no interpreter start unless a switch is pending from an
# earlier boot: then the tool's boot-check rolls it back).
_PRECHECK = (
    "'if [ -e {root}/pending.boot ] && "
    "! cmp -s {root}/pending.boot /proc/sys/kernel/random/boot_id; then "
    "exec /usr/bin/python3 -S {root}/bin/edgeagent-device.py --root {root} boot-check; fi'"
)


def unit_text(user: str, root: Path) -> str:
    """The agent's systemd unit for a device root: ``setup`` installs it, and the image's
    first-boot installer writes the same text when it installs into a fake root."""
    return _UNIT.format(user=user, root=root, precheck=_PRECHECK.format(root=root))


def cmd_setup(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """First contact: layout, trusted keys, the service user and unit."""
    for name in (args.device, args.profile):
        if not _NAME.fullmatch(name):
            raise Refused(f"bad name {name!r}")
    for sub in ("bin", "keys", "store", "envs", "releases", "incoming", "log", "run"):
        (dev.root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(dev.root, 0o755)
    service = args.service
    if service == "auto":
        service = "systemd" if Path("/run/systemd/system").is_dir() else "process"
    user = args.user
    if service == "systemd" and os.getuid() == 0:
        if subprocess.run(["id", "-u", user], capture_output=True, check=False).returncode:
            _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
        unit_path = Path("/etc/systemd/system/edgeagent@.service")
        unit_path.write_text(unit_text(user, dev.root))
        # The agent's own update requests (system.update, issue 12): it cannot write here, so
        # it writes request.json into its state folder and this path unit applies it as root.
        Path("/etc/systemd/system/edgeagent-apply@.path").write_text(_APPLY_PATH)
        Path("/etc/systemd/system/edgeagent-apply@.service").write_text(
            _APPLY_SERVICE.format(python=sys.executable, root=dev.root)
        )
        _run(["systemctl", "daemon-reload"])
        _run(["systemctl", "enable", f"edgeagent@{args.device}.service"], check=False)
        _run(["systemctl", "enable", "--now", f"edgeagent-apply@{args.device}.path"], check=False)
    info = {"device": args.device, "profile": args.profile, "service": service, "user": user}
    old = dev.info()
    if old and old.get("device") != args.device:
        raise Refused(
            f"this device runs agent {old.get('device')!r}, not {args.device!r} "
            f"(one agent per device; remove {dev.root} to start over)"
        )
    (dev.root / "device.json").write_text(json.dumps(info, indent=1) + "\n")
    return {"device": info}


def public_key_id(text: str) -> str:
    """The key id of a minisign public key text, as minisign prints it."""
    remote_verify = _remote_verify()
    try:
        key_id, _ = remote_verify.parse_public_key(text)
    except ValueError as exc:
        raise Refused(f"a trusted key is not a minisign public key: {exc}") from exc
    return str(remote_verify.key_id_hex(key_id))


def cmd_trust(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Install trusted public keys read from stdin (minisign .pub texts, separated by '%%')."""
    dev.keys.mkdir(parents=True, exist_ok=True)
    added = []
    for text in _input(args).split("%%"):
        if not text.strip():
            continue
        key_id = public_key_id(text)
        dest = dev.keys / f"{key_id}.pub"
        if not dest.exists():
            dest.write_text(text.strip() + "\n")
            added.append(key_id)
    return {"added": added, "trusted": sorted(p.stem for p in dev.keys.glob("*.pub"))}


def _trusted(dev: Device) -> list[str]:
    return [p.read_text() for p in sorted(dev.keys.glob("*.pub"))] if dev.keys.is_dir() else []


def cmd_ingest(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Move files a non-root login uploaded to its staging folder into the store (each checked
    against its hash name) and the bundle's manifest into incoming/."""
    src = Path(args.source)
    moved = 0
    store = src / "store"
    if store.is_dir():
        dev.store.mkdir(parents=True, exist_ok=True)
        for p in store.iterdir():
            if not _HEX64.fullmatch(p.name) or file_sha256(p) != p.name:
                p.unlink()
                raise Refused(
                    f"staged file {p.name[:16]}… does not match its hash (damaged upload)"
                )
            dest = dev.store / p.name
            shutil.move(str(p), dest)
            _own(dest)
            moved += 1
    incoming = src / "incoming"
    if incoming.is_dir():
        for folder in incoming.iterdir():
            if not _VERSION.fullmatch(folder.name):
                raise Refused(f"staged release folder {folder.name!r}: bad version")
            dest_dir = dev.incoming / folder.name
            dest_dir.mkdir(parents=True, exist_ok=True)
            for name in ("bundle.json", "bundle.json.minisig"):
                if (folder / name).is_file():
                    shutil.move(str(folder / name), dest_dir / name)
                    _own(dest_dir / name)
            shutil.rmtree(folder, ignore_errors=True)
    return {"moved": moved}


def _own(path: Path) -> None:
    os.chmod(path, 0o644)
    if os.getuid() == 0:
        os.chown(path, 0, 0)


def verify_incoming(dev: Device, version: str) -> tuple[dict[str, Any], bytes, str]:
    """Check an uploaded bundle: signature, shape, platform, profile, every file."""
    if not _VERSION.fullmatch(version):
        raise Refused(f"bad version {version!r}")
    folder = dev.incoming / version
    try:
        raw = (folder / "bundle.json").read_bytes()
        sig = (folder / "bundle.json.minisig").read_text()
    except FileNotFoundError as exc:
        raise Refused(f"{exc.filename}: missing (unsigned bundle?)") from exc
    key_id, _trusted_comment = check_signature(raw, sig, _trusted(dev))
    data = check_manifest(raw)
    if data["version"] != version:
        raise Refused(f"bundle.json: version {data['version']}, uploaded as {version}")
    machine = platform.machine()
    if data["platform"]["arch"] != machine:
        raise Refused(f"bundle is for {data['platform']['arch']}, this device is {machine}")
    py = "{}.{}".format(*sys.version_info[:2])
    if data["platform"]["python"] != py:
        raise Refused(f"bundle is for Python {data['platform']['python']}, the device has {py}")
    info = dev.info()
    if info.get("profile") and info["profile"] != data["profile"]:
        raise Refused(f"bundle is for profile {data['profile']}, this device is {info['profile']}")
    if info.get("device") and info["device"] != data["device"]:
        raise Refused(f"bundle runs agent {data['device']}, this device runs {info['device']}")
    check_files(data, dev.store)
    return data, raw, key_id


def _place(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def _pip_wheel() -> Path | None:
    """pip's own wheel as this Python ships it for ``ensurepip`` (CPython: ensurepip/_bundled;
    Debian and Raspberry Pi OS: /usr/share/python-wheels), or None."""
    places = [Path("/usr/share/python-wheels")]
    try:
        import ensurepip

        places.insert(0, Path(ensurepip.__file__).parent / "_bundled")
    except ImportError:
        pass
    for place in places:
        found = sorted(place.glob("pip-*-py3-none-any.whl"))
        if found:
            return found[-1]
    return None


def _build_env(dev: Device, data: dict[str, Any]) -> bool:
    """The release's virtual environment, installed offline from its wheels; shared by every
    release with the same wheels. Built in place (a venv records its own path); a build that
    was interrupted has no ``.complete`` marker and is redone."""
    env_dir = dev.envs / data["env"]
    if (env_dir / ".complete").is_file():
        return False
    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    py = str(env_dir / "bin" / "python")
    pip_wheel = _pip_wheel()
    if pip_wheel is not None:
        # No pip inside the environment: installing pip into it (ensurepip, with its ~1,000
        # files compiled) is most of the time on a small device (measured in the emulated
        # arm64 device: venv 73 s, then the release's wheels 31 s; this way 39 s in all).
        _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
        pip = [py, str(pip_wheel / "pip")]  # pip runs from its wheel, installing into py's env
    else:
        _run([sys.executable, "-m", "venv", str(env_dir)])
        pip = [py, "-m", "pip"]
    wheels = env_dir / ".wheels"
    wheels.mkdir()
    for f in data["files"]:
        if f["role"] == "wheel":
            _place(dev.store / f["sha256"], wheels / f["path"].rsplit("/", 1)[-1])
    _run(
        [
            *pip,
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--disable-pip-version-check",
            *[str(p) for p in sorted(wheels.iterdir())],
        ]
    )
    shutil.rmtree(wheels, ignore_errors=True)
    # Compiled here, on every core, so the agent's first start is not the one paying for it.
    for site in env_dir.glob("lib/python*/site-packages"):
        compileall.compile_dir(str(site), quiet=1, workers=0)
    (env_dir / ".complete").write_text(data["env"] + "\n")
    return True


def cmd_install(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Verify an uploaded bundle and build its release next to the running one; with
    ``--activate``, switch to it too (one interpreter start instead of two)."""
    with dev.locked():
        result = _install(dev, args.version)
        if args.activate:
            result.update(_activate(dev, args.version, args.confirm_within))
        return result


def _install(dev: Device, version: str) -> dict[str, Any]:
    if (dev.releases / version / ".complete").is_file() and not (dev.incoming / version).is_dir():
        return {"version": version, "installed": False, "env_built": False}
    data, raw, key_id = verify_incoming(dev, version)
    final = dev.releases / data["version"]
    if (final / ".complete").is_file():
        shutil.rmtree(dev.incoming / data["version"], ignore_errors=True)
        return {"version": data["version"], "installed": False, "env_built": False}
    try:
        env_built = _build_env(dev, data)
        work = dev.releases / f".partial-{data['version']}"
        shutil.rmtree(work, ignore_errors=True)
        for f in data["files"]:
            if f["role"] != "wheel":
                _place(dev.store / f["sha256"], work / f["path"])
        (work / "bundle.json").write_bytes(raw)
        shutil.copyfile(
            dev.incoming / data["version"] / "bundle.json.minisig",
            work / "bundle.json.minisig",
        )
        (work / "release.env").write_text(
            f"EDGEAGENT_RELEASE={data['version']}\nPYTHONUNBUFFERED=1\n"
        )
        os.symlink(f"../../envs/{data['env']}", work / "venv")
        # Bytecode now: the sandboxed agent cannot write it, and compiling at every start is
        # slow on a small device (the environment's wheels are compiled by pip).
        compileall.compile_dir(str(work / "app"), quiet=1)
        (work / ".complete").write_text(data["version"] + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        _fsync_dir(dev.releases)
    except OSError as exc:
        shutil.rmtree(dev.releases / f".partial-{data['version']}", ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise Refused(
                f"the device's disk is full while installing {data['version']} "
                f"(free: {shutil.disk_usage(dev.root).free // 1024} KiB); "
                "prune old releases or free space"
            ) from exc
        raise
    shutil.rmtree(dev.incoming / data["version"], ignore_errors=True)
    dev.record("installed", version=data["version"], key=key_id)
    return {"version": data["version"], "installed": True, "env_built": env_built}


def _arm_rollback(dev: Device, switch: str, seconds: float) -> None:
    """Arm the timer that undoes switch ``switch`` unless it is confirmed within ``seconds``.
    The timer acts on that switch only: a timer of an earlier switch that fires late finds
    another switch id pending (or none) and does nothing."""
    tool = str(Path(__file__).resolve())
    which = ["--switch", switch]
    if dev.service_kind() == "systemd":
        # A unit name of its own per switch: no stop/reset of an earlier timer needed.
        name = f"edgeagent-rollback-{dev.info().get('device', 'agent')}-{switch}"
        _run(
            [
                "systemd-run",
                f"--unit={name}",
                f"--on-active={max(1, int(seconds))}s",
                "--timer-property=AccuracySec=1s",
                sys.executable,
                tool,
                "--root",
                str(dev.root),
                "auto-rollback",
                *which,
            ]
        )
    else:
        subprocess.Popen(
            [
                sys.executable,
                tool,
                "--root",
                str(dev.root),
                "auto-rollback",
                *which,
                "--after",
                str(seconds),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def cmd_activate(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Switch ``current`` to an installed release and restart; undone unless confirmed."""
    with dev.locked():
        return _activate(dev, args.version, args.confirm_within)


def _activate(dev: Device, version: str, confirm_within: float) -> dict[str, Any]:
    if not (dev.releases / version / ".complete").is_file():
        raise Refused(f"release {version} is not installed")
    cur = dev.link("current")
    if cur == version and not dev.pending():
        dev.restart()
        return {"current": version, "previous": dev.link("previous"), "switched": False}
    switch = time.strftime("%Y%m%d%H%M%S") + "-" + os.urandom(3).hex()
    pending = {
        "version": version,
        "switch": switch,
        "previous": cur,
        "boot_id": _boot_id(),
        "deadline": time.time() + confirm_within,
    }
    tmp = dev.root / "pending.json.tmp"
    tmp.write_text(json.dumps(pending))
    os.replace(tmp, dev.root / "pending.json")
    # For the unit's pre-start check, in shell: a pending switch from another boot?
    (dev.root / "pending.boot").write_text(_boot_id() + "\n")
    if cur is not None and cur != version:
        dev.set_link("previous", cur)
    dev.set_link("current", version)
    dev.record("activated", version=version, previous=cur)
    _arm_rollback(dev, switch, confirm_within)
    dev.restart()
    return {"current": version, "previous": cur, "switched": True}


def cmd_commit(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """The new release is healthy: keep it."""
    with dev.locked():
        pending = dev.pending()
        if pending is None or pending.get("version") != args.version:
            if dev.link("current") != args.version:
                raise Refused(f"{args.version} is not the pending release (rolled back already?)")
        else:
            _clear_pending(dev)
            dev.record("healthy", version=args.version)
    if args.prune is not None:
        try:
            pruned = cmd_prune(dev, argparse.Namespace(keep=args.prune))
        except (Refused, OSError) as exc:  # committed all the same
            pruned = {"prune_error": str(exc)}
        return {"committed": args.version, **pruned}
    return {"committed": args.version}


def _clear_pending(dev: Device) -> None:
    for name in ("pending.json", "pending.boot"):
        with contextlib.suppress(FileNotFoundError):
            (dev.root / name).unlink()


def _rollback(dev: Device, target: str | None, reason: str) -> dict[str, Any]:
    cur = dev.link("current")
    pending = dev.pending()
    if target is None:
        target = (pending or {}).get("previous") if pending else dev.link("previous")
    if target is None:
        raise Refused("no previous release to roll back to")
    if not (dev.releases / target / ".complete").is_file():
        raise Refused(f"release {target} is not installed (have: {dev.release_versions()})")
    dev.set_link("current", target)
    if cur and cur != target:
        dev.set_link("previous", cur)
    _clear_pending(dev)
    dev.record("rolled_back", version=target, failed=cur, reason=reason)
    dev.restart()
    return {"current": target, "rolled_back_from": cur}


def cmd_rollback(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    with dev.locked():
        return _rollback(dev, args.to, args.reason)


def _still_pending(dev: Device, switch: str | None) -> dict[str, Any] | None:
    """The pending switch this timer was armed for (any pending one for a timer armed by an
    older device tool, which passed no id), or None once it is confirmed, undone or replaced."""
    pending = dev.pending()
    if pending is None or pending.get("version") != dev.link("current"):
        return None
    if switch is not None and pending.get("switch") != switch:
        return None
    return pending


def cmd_auto_rollback(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Run by the timer armed at activation: roll back if the switch was never confirmed. In
    process mode (``--after``) it waits here, looking once a second whether the switch was
    confirmed (then it exits at once rather than sleeping on)."""
    end = time.monotonic() + args.after
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        if _still_pending(dev, args.switch) is None:
            return {"rolled_back": False}
    with dev.locked():
        if _still_pending(dev, args.switch) is None:
            return {"rolled_back": False}
        result = _rollback(dev, None, "not confirmed healthy in time")
        return {"rolled_back": True, **result}


def cmd_boot_check(dev: Device, _: argparse.Namespace) -> dict[str, Any]:
    """Before the agent starts: a switch left unconfirmed across a reboot is undone."""
    pending = dev.pending()
    if pending is None:
        _clear_pending(dev)
        return {"rolled_back": False}
    if pending.get("boot_id") == _boot_id():
        return {"rolled_back": False}
    target = pending.get("previous")
    if not target or not (dev.releases / target / ".complete").is_file():
        return {"rolled_back": False}
    failed = dev.link("current")
    dev.set_link("current", target)
    if failed and failed != target:
        dev.set_link("previous", failed)
    _clear_pending(dev)
    dev.record("rolled_back", version=target, failed=failed, reason="rebooted before confirmed")
    return {"rolled_back": True, "current": target}


def cmd_status(dev: Device, _: argparse.Namespace) -> dict[str, Any]:
    cur = dev.link("current")
    active = None
    if dev.service_kind() == "systemd" and dev.info():
        active = subprocess.run(
            ["systemctl", "is-active", dev.unit()], capture_output=True, text=True, check=False
        ).stdout.strip()
    return {
        "device": dev.info(),
        "current": cur,
        "previous": dev.link("previous"),
        "pending": dev.pending(),
        "releases": dev.release_versions(),
        "service": active,
        "trusted_keys": sorted(p.stem for p in dev.keys.glob("*.pub")) if dev.keys.is_dir() else [],
    }


def cmd_history(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    return {"history": dev.history(args.limit)}


def cmd_logs(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    return {"logs": dev.logs(args.lines)}


def cmd_prune(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Keep the newest ``keep`` releases (and current, previous, pending); drop the rest."""
    with dev.locked():
        versions = dev.release_versions()
        protect = {dev.link("current"), dev.link("previous"), (dev.pending() or {}).get("version")}
        kept = set(versions[-args.keep :]) if args.keep > 0 else set()
        removed = [v for v in versions if v not in kept and v not in protect]
        for v in removed:
            shutil.rmtree(dev.releases / v, ignore_errors=True)
        for p in dev.releases.glob(".partial-*"):
            shutil.rmtree(p, ignore_errors=True)
        # Envs and store files no remaining release uses.
        used_envs: set[str] = set()
        used_files: set[str] = set()
        for v in dev.release_versions():
            with contextlib.suppress(OSError, ValueError):
                data = json.loads((dev.releases / v / "bundle.json").read_bytes())
                used_envs.add(data["env"])
                used_files.update(f["sha256"] for f in data["files"])
        envs_removed = []
        if dev.envs.is_dir():
            for p in dev.envs.iterdir():
                if p.name not in used_envs:
                    shutil.rmtree(p, ignore_errors=True)
                    envs_removed.append(p.name)
        files_removed = 0
        if dev.store.is_dir():
            for p in dev.store.iterdir():
                if p.name not in used_files:
                    p.unlink()
                    files_removed += 1
        if removed:
            dev.record("pruned", versions=removed)
        return {"removed": removed, "envs_removed": envs_removed, "files_removed": files_removed}


def cmd_apply(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """Carry out what the agent asked for in its spool folder (``system.update`` and friends,
    issue 12): the agent runs unprivileged and sandboxed, so it stages a bundle and writes
    ``request.json``; this, as root (a systemd path unit) or as the agent's own user (process
    mode), checks and applies it and leaves ``result.json``. Actions: ``update`` (ingest the
    staged files, verify, install, activate with the deadline to confirm), ``commit``,
    ``rollback``, ``restart``. The spool is the agent's to write: nothing in it is followed
    (symbolic links and other non-regular files are refused) and the result replaces its file
    without following a link."""
    spool = Path(args.spool)
    request_path = spool / "request.json"
    try:
        raw = request_path.read_bytes()
    except FileNotFoundError:
        return {"applied": False}
    request_path.unlink()
    action = "?"
    try:
        req = json.loads(raw) if len(raw) < 4096 else None
        if not isinstance(req, dict):
            raise Refused("request.json: not a JSON object (under 4 KiB)")
        action = str(req.get("action"))
        version = str(req.get("version", ""))
        if action in ("update", "commit") and not _VERSION.fullmatch(version):
            raise Refused(f"request.json: bad version {version!r}")
        if action == "update":
            stage = spool / "stage"
            for folder, dirs, files in os.walk(stage):
                for name in (*dirs, *files):
                    mode = os.lstat(os.path.join(folder, name)).st_mode
                    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                        raise Refused(f"staged {name!r} is not a plain file")
            cmd_ingest(dev, argparse.Namespace(source=str(stage)))
            within = min(max(float(req.get("confirm_within", 120.0)), 10.0), 3600.0)
            ns = argparse.Namespace(version=version, activate=True, confirm_within=within)
            result = cmd_install(dev, ns)
        elif action == "commit":
            result = cmd_commit(dev, argparse.Namespace(version=version, prune=None))
        elif action == "rollback":
            reason = str(req.get("reason", "asked for"))[:200]
            result = cmd_rollback(dev, argparse.Namespace(to=None, reason=reason))
        elif action == "restart":
            dev.restart()
            result = {"restarted": True}
        else:
            raise Refused(f"request.json: unknown action {action!r}")
        out: dict[str, Any] = {"action": action, "ok": True, **result}
    except (Refused, OSError, ValueError) as exc:
        out = {"action": action, "ok": False, "error": str(exc)}
    dev.record("applied", **{k: v for k, v in out.items() if isinstance(v, (str, bool))})
    tmp = spool / f".result-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({**out, "ts": round(time.time(), 3)}) + "\n")
    os.replace(tmp, spool / "result.json")
    return out


COMMANDS = {
    "probe": cmd_probe,
    "have": cmd_have,
    "setup": cmd_setup,
    "trust": cmd_trust,
    "install": cmd_install,
    "ingest": cmd_ingest,
    "activate": cmd_activate,
    "commit": cmd_commit,
    "rollback": cmd_rollback,
    "auto-rollback": cmd_auto_rollback,
    "boot-check": cmd_boot_check,
    "status": cmd_status,
    "history": cmd_history,
    "logs": cmd_logs,
    "prune": cmd_prune,
    "apply": cmd_apply,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeagent-device", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=DEFAULT_ROOT)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("probe", "have", "boot-check", "status", "serve"):
        sub.add_parser(name)
    s = sub.add_parser("setup")
    s.add_argument("--device", required=True)
    s.add_argument("--profile", required=True)
    s.add_argument("--service", choices=["auto", "systemd", "process"], default="auto")
    s.add_argument("--user", default="edgeagent")
    sub.add_parser("trust")
    sub.add_parser("ingest").add_argument("--from", dest="source", required=True)
    ins = sub.add_parser("install")
    ins.add_argument("version")
    ins.add_argument("--activate", action="store_true")
    ins.add_argument("--confirm-within", type=float, default=120.0)
    com = sub.add_parser("commit")
    com.add_argument("version")
    com.add_argument("--prune", type=int, default=None)
    a = sub.add_parser("activate")
    a.add_argument("version")
    a.add_argument("--confirm-within", type=float, default=120.0)
    r = sub.add_parser("rollback")
    r.add_argument("--to")
    r.add_argument("--reason", default="asked for")
    ar = sub.add_parser("auto-rollback")
    ar.add_argument("--after", type=float, default=0.0)
    ar.add_argument("--switch", help="the switch this timer is for (pending.json's 'switch')")
    h = sub.add_parser("history")
    h.add_argument("--limit", type=int, default=50)
    lg = sub.add_parser("logs")
    lg.add_argument("--lines", type=int, default=40)
    pr = sub.add_parser("prune")
    pr.add_argument("--keep", type=int, default=3)
    sub.add_parser("apply").add_argument("--spool", required=True)
    return p


def run_one(dev: Device, args: argparse.Namespace) -> dict[str, Any]:
    """One command's result, or ``{"error": ...}``."""
    try:
        return COMMANDS[args.command](dev, args)
    except Refused as exc:
        return {"error": str(exc)}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def serve(root: str) -> int:
    """Answer commands, one JSON request per line (``{"args": [...], "input": "..."}``), one
    JSON result per line, until end of input: a deploy pays for one interpreter start."""
    p = parser()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            argv = req["args"]
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise ValueError("args must be a list of strings")
            if argv and argv[0] == "serve":
                raise ValueError("serve inside serve")
            args = p.parse_args(["--root", root, *argv])
            args.input = req.get("input")
            result = run_one(Device(Path(root)), args)
        except SystemExit:
            result = {"error": f"bad command: {line.strip()[:200]}"}
        except (ValueError, KeyError, TypeError) as exc:
            result = {"error": f"bad request: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        return serve(args.root)
    result = run_one(Device(Path(args.root)), args)
    print(json.dumps(result))
    return 2 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
