"""edgeagent's first-boot installer: standard library only, copied into an image's boot partition
as ``edgeagent/edgeagent-firstboot.py`` and run once, as root, by cloud-init's ``runcmd`` or by
``firstrun.sh``::

    python3 -S /boot/firmware/edgeagent/edgeagent-firstboot.py --boot /boot/firmware

It installs the bundle beside it offline into ``/opt/edgeagent`` with the device tool's own
commands, exactly as ``edgeagent deploy`` does (setup, trust, ingest, install --activate, then
commit: a first release has nothing to roll back to), writes the credential files (0600, owned by
the agent's service user) and the systemd drop-in that hands the agent its broker password,
points the agent at its own broker settings (``broker.yaml`` beside the credential, through
``$EDGEAGENT_BROKER_CONFIG``: a release deployed later keeps this device's broker and credential),
enables and starts the unit, and then removes the secrets from the boot partition (the enrolment
file, a ``network-config`` holding the Wi-Fi PSK) and the bundle (installed now). It prints one
line per step, never a secret.

``--root PREFIX`` (or ``$EDGEAGENT_FIRSTBOOT_ROOT``) installs under PREFIX instead of ``/``: the
device root is ``PREFIX/opt/edgeagent``, credentials and the unit go under ``PREFIX/etc``, no user
is created and ``systemctl`` is not called (the unit is written and enabled as files). That is how
the tests run it on the build machine.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOOL = "edgeagent-device.py"
VERIFY = "remote_verify.py"
FOLDER = "edgeagent"
ENROLMENT = "enrolment.json"
BUNDLE = "bundle"
PROFILES = "profiles"
DONE = "installed.json"
PASSWORD_ENV = "EDGEAGENT_BROKER_PASSWORD"
ROOT_ENV = "EDGEAGENT_FIRSTBOOT_ROOT"
DROP_IN = "edgeagent-credentials.conf"
BROKER_FILE = "broker.yaml"
BROKER_CONFIG_ENV = "EDGEAGENT_BROKER_CONFIG"


class Failed(Exception):
    """The installation cannot go on; the message says which step and why."""


def say(message: str) -> None:
    print(f"edgeagent-firstboot: {message}", flush=True)


class Installer:
    def __init__(self, boot: Path, prefix: Path, service: str) -> None:
        self.boot = boot
        self.folder = boot / FOLDER
        self.prefix = prefix
        self.fake = prefix.resolve() != Path("/")
        self.root = prefix / "opt" / "edgeagent"
        self.etc = prefix / "etc"
        if service == "auto":
            systemd = Path("/run/systemd/system").is_dir() and not self.fake
            service = "systemd" if systemd else "process"
        self.service = service
        self.env = dict(os.environ)

    def tool(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        cmd = [sys.executable, "-S", str(self.root / "bin" / TOOL), "--root", str(self.root)]
        proc = subprocess.run(
            [*cmd, *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env=self.env,
            timeout=1800,
            check=False,
        )
        lines = proc.stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1]) if lines else {}
        except ValueError:
            result = {}
        if proc.returncode != 0 or "error" in result:
            why = result.get("error") or proc.stderr.strip()[-400:] or f"exit {proc.returncode}"
            raise Failed(f"device tool `{args[0]}`: {why}")
        return result if isinstance(result, dict) else {}

    def owner(self, user: str) -> tuple[int, int] | None:
        if self.fake or os.getuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid

    def write(self, path: Path, text: str, mode: int, owner: tuple[int, int] | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)

    def run(self) -> dict[str, Any]:
        enrol_path = self.folder / ENROLMENT
        if not enrol_path.is_file():
            if (self.folder / DONE).is_file():
                say("already installed (nothing to do)")
                return {"installed": False}
            raise Failed(f"{enrol_path}: missing: nothing to install")
        done = False
        try:
            enrol = json.loads(enrol_path.read_text())
            if enrol.get("kind") != "edgeagent-enrolment" or enrol.get("format") != 1:
                raise Failed(f"{enrol_path}: not an edgeagent enrolment (format 1)")
            result = self._install(enrol)
            done = True
            return result
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Failed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.remove_secrets(done)

    def board(self) -> str:
        """The board's model, as the kernel has it from the device tree ('' when none)."""
        for name in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
            with contextlib.suppress(OSError):
                return (self.prefix / name).read_bytes().rstrip(b"\0").decode(errors="replace")
        return ""

    def choose(self, enrol: dict[str, Any]) -> tuple[str, str, Path]:
        """The profile, release and bundle manifest folder for this board. An image for one
        profile names it; an image for a family (``--device pi``) carries a bundle per profile
        and the board's model picks one, by the profiles' ``match`` substrings."""
        choices = enrol.get("profiles")
        if not choices:
            return str(enrol["profile"]), str(enrol["release"]), self.folder / BUNDLE
        model = self.board()
        for profile, choice in sorted(choices.items()):
            if any(m and m in model for m in choice["match"]):
                say(f"board {model!r}: profile {profile}")
                folder = self.folder / BUNDLE / PROFILES / profile
                return profile, str(choice["release"]), folder
        known = "; ".join(f"{p}: {', '.join(c['match'])}" for p, c in sorted(choices.items()))
        raise Failed(
            f"this board ({model or 'no device-tree model'}) is none of the image's profiles "
            f"({known}): build an image for it with --device"
        )

    def _install(self, enrol: dict[str, Any]) -> dict[str, Any]:
        device, user = str(enrol["device"]), str(enrol["service_user"])
        profile, release, manifests = self.choose(enrol)
        say(f"installing {release} for {device} into {self.root} ({self.service})")
        bin_dir = self.root / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name in (TOOL, VERIFY):
            shutil.copyfile(self.folder / name, bin_dir / name)
            os.chmod(bin_dir / name, 0o644)
        self.tool("setup", "--device", device, "--profile", profile,
                  "--service", self.service, "--user", user)  # fmt: skip
        self.credentials(enrol, user)
        self.unit(device, enrol)
        keys = [str(k) for k in enrol["trusted_keys"]]
        self.tool("trust", stdin="%%".join(keys))
        version = self.stage(release, manifests)
        say("verifying the bundle's signature and files; building the environment")
        self.tool("install", version, "--activate", "--confirm-within", "600")
        # The first release has nothing to roll back to: confirmed at once.
        self.tool("commit", version)
        say(f"{device} runs {version}")
        return {"installed": True, "device": device, "version": version, "profile": profile}

    def credentials(self, enrol: dict[str, Any], user: str) -> None:
        creds = enrol["credentials"]
        folder = self.prefix / str(creds["dir"]).lstrip("/")
        owner = self.owner(user)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        if owner is not None:
            os.chown(folder, *owner)
        for name, text in sorted(creds["files"].items()):
            if "/" in name or name.startswith("."):
                raise Failed(f"enrolment: bad credential file name {name!r}")
            self.write(folder / name, str(text), 0o600, owner)
            if name == "broker.env":
                key, _, value = str(text).strip().partition("=")
                self.env[key] = value  # for the agent a process-mode device starts
        say(f"credentials written to {folder} (0600, {user})")

    def unit(self, device: str, enrol: dict[str, Any]) -> None:
        systemd = self.etc / "systemd" / "system"
        if self.fake:
            # The device tool writes and enables the unit only as root on a systemd host.
            spec = importlib.util.spec_from_file_location(
                "edgeagent_device", self.root / "bin" / TOOL
            )
            if spec is None or spec.loader is None:
                raise Failed("cannot load the device tool")
            sys.path.insert(0, str(self.root / "bin"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            text = module.unit_text(enrol["service_user"], self.root)
            self.write(systemd / "edgeagent@.service", text, 0o644, None)
            wants = systemd / "multi-user.target.wants" / f"edgeagent@{device}.service"
            wants.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                wants.unlink()
            wants.symlink_to("../edgeagent@.service")
        creds_dir, files = str(enrol["credentials"]["dir"]), enrol["credentials"]["files"]
        lines = [
            "# edgeagent image build: this device's broker settings and credential",
            "[Service]",
        ]
        if BROKER_FILE in files:
            # The agent takes its broker from here, whatever config a later deploy ships.
            lines.append(f"Environment={BROKER_CONFIG_ENV}={creds_dir}/{BROKER_FILE}")
            self.env[BROKER_CONFIG_ENV] = str(self.prefix / creds_dir.lstrip("/") / BROKER_FILE)
        if "broker.env" in files:
            lines.append(f"EnvironmentFile={creds_dir}/broker.env")
        if len(lines) > 2:
            drop_in = systemd / f"edgeagent@{device}.service.d" / DROP_IN
            self.write(drop_in, "\n".join(lines) + "\n", 0o644, None)
        if self.service == "systemd" and not self.fake:
            subprocess.run(["systemctl", "daemon-reload"], check=False)

    def stage(self, version: str, manifests: Path) -> str:
        """The bundle in the layout the tool's ``ingest`` takes (as a deploy uploads it): its
        manifest and signature from ``manifests``, the content files from the shared store."""
        bundle = self.folder / BUNDLE
        staging = self.root / ".firstboot-staging"
        shutil.rmtree(staging, ignore_errors=True)
        store = staging / "store"
        store.mkdir(parents=True)
        for f in sorted((bundle / "files").iterdir()):
            shutil.copyfile(f, store / f.name)
        incoming = staging / "incoming" / version
        incoming.mkdir(parents=True)
        for name in ("bundle.json", "bundle.json.minisig"):
            shutil.copyfile(manifests / name, incoming / name)
        try:
            self.tool("ingest", "--from", str(staging))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return version

    def remove_secrets(self, done: bool) -> None:
        """The enrolment file, the Wi-Fi PSK and the bundle leave the boot partition, installed
        or not (a failed first boot is re-flashed, not retried with secrets left lying)."""
        removed = []
        for path in (self.folder / ENROLMENT, self.boot / "network-config"):
            if path.name == "network-config":
                with contextlib.suppress(OSError):
                    if "password" not in path.read_text():
                        continue
            with contextlib.suppress(FileNotFoundError):
                wipe(path)
                removed.append(path.name)
        shutil.rmtree(self.folder / BUNDLE, ignore_errors=True)
        if done:
            with contextlib.suppress(OSError):
                (self.folder / DONE).write_text(json.dumps({"ts": round(time.time())}) + "\n")
        say(f"removed from the boot partition: {', '.join(removed) or 'nothing'}, the bundle")


def wipe(path: Path) -> None:
    """Overwrite a secret file with zeros, flushed, then remove it: deleting a file from a FAT
    partition only marks its clusters free, and the card would still hold the secret (the
    emulated first boot found the broker password there). FAT rewrites a file in place, in the
    same clusters. (An SD card's flash translation may keep old copies of a block; only the
    card's own erase removes those.)"""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(bytes(size))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgeagent-firstboot", description=__doc__.split("\n")[0])
    p.add_argument("--boot", required=True, help="where the boot partition is mounted")
    p.add_argument("--root", default=os.environ.get(ROOT_ENV, "/"), help="install under PREFIX")
    p.add_argument("--service", choices=["auto", "systemd", "process"], default="auto")
    args = p.parse_args(argv)
    try:
        result = Installer(Path(args.boot), Path(args.root), args.service).run()
    except Failed as exc:
        say(f"failed: {exc}")
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
