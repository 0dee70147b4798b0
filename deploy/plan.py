"""The pure decisions of a deploy: which profile the device is, whether it can run the release,
what to upload, whether the new release is healthy. No I/O: the SSH and MQTT adapters in
``deployer`` feed these functions what they saw and carry out what they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..devices import DeviceProfile
from .errors import ProfileMismatch

#: Room kept free on the device beyond what a release needs, bytes.
FREE_SPACE_MARGIN = 32 * 1024 * 1024
#: A virtual environment takes about this many times its wheels' size once installed.
ENV_EXPANSION = 3


@dataclass(frozen=True, slots=True)
class ProfileChoice:
    profile: DeviceProfile
    reason: str


def _matches(profile: DeviceProfile, model: str) -> bool:
    return any(m in model for m in profile.match)


def choose_profile(
    requested: str, probe: dict[str, Any], profiles: Sequence[DeviceProfile]
) -> ProfileChoice:
    """Resolve ``--device`` (a profile name or a family such as ``pi``) against the hardware.

    A profile given by name must fit the device (architecture, and board model when the profile
    names boards); a family picks the one profile whose board model matches.
    """
    arch = str(probe.get("arch", ""))
    model = str(probe.get("model", "")).strip()
    seen = f"the device is {model or 'a board with no device-tree model'} ({arch})"
    by_name = {p.name: p for p in profiles}
    if requested in by_name:
        p = by_name[requested]
        if p.arch != arch:
            raise ProfileMismatch(f"--device {requested} is {p.title} ({p.arch}), but {seen}")
        if p.match and not _matches(p, model):
            raise ProfileMismatch(
                f"--device {requested} is {p.title}, but {seen}; "
                f"pick the profile that matches (or --device {p.family or requested} to choose)"
            )
        return ProfileChoice(p, f"{p.name} as asked; {seen}")
    family = [p for p in profiles if p.family == requested]
    if not family:
        names = ", ".join(sorted(by_name))
        families = ", ".join(sorted({p.family for p in profiles if p.family}))
        raise ProfileMismatch(
            f"no device profile or family {requested!r} (profiles: {names}; families: {families})"
        )
    found = [p for p in family if p.arch == arch and _matches(p, model)]
    if len(found) == 1:
        return ProfileChoice(found[0], f"{found[0].name}: read from the device ({seen})")
    if not found:
        known = "; ".join(f"{p.name}: {', '.join(p.match) or 'any'}" for p in family)
        raise ProfileMismatch(
            f"--device {requested}: no {requested} profile matches: {seen} (known: {known}); "
            "give a profile by name"
        )
    raise ProfileMismatch(
        f"--device {requested}: several profiles match ({', '.join(p.name for p in found)}); "
        "give one by name"
    )


def host_problems(
    probe: dict[str, Any], manifest: dict[str, Any], upload_bytes: int, env_bytes: int
) -> list[str]:
    """Everything that stops this device from running this release, each said plainly."""
    problems = []
    plat = manifest["platform"]
    if probe.get("arch") != plat["arch"]:
        problems.append(
            f"architecture: the release is for {plat['arch']}, the device is {probe.get('arch')}"
        )
    py = ".".join(str(probe.get("python", "")).split(".")[:2])
    if py != plat["python"]:
        problems.append(
            f"Python: the release's wheels are for Python {plat['python']}, the device has "
            f"{probe.get('python') or 'none'} (build with --python {py or '?'})"
        )
    os_info = probe.get("os") or {}
    if os_info.get("ID") not in ("debian", "raspbian", "ubuntu"):
        problems.append(
            f"operating system: {os_info.get('PRETTY_NAME') or 'unknown'}; edgeagent deploys to "
            "Debian, Raspberry Pi OS and Ubuntu"
        )
    if not probe.get("venv"):
        problems.append("python3-venv is missing on the device: apt-get install python3-venv")
    if not probe.get("openssl"):
        problems.append(
            "openssl is missing on the device (it checks the release's signature): "
            "apt-get install openssl"
        )
    needed = upload_bytes + env_bytes + FREE_SPACE_MARGIN
    free = int(probe.get("free_bytes", 0))
    if free < needed:
        problems.append(
            f"disk space: the release needs about {needed / 1e6:.0f} MB free under "
            f"{probe.get('root')}, the device has {free / 1e6:.0f} MB "
            "(prune old releases with `edgeagent deploy prune` or free space)"
        )
    return problems


def env_bytes(manifest: dict[str, Any], probe: dict[str, Any]) -> int:
    """Space the release's virtual environment will take if the device must build it."""
    if manifest["env"] in (probe.get("envs") or []):
        return 0
    wheels = sum(int(f["size"]) for f in manifest["files"] if f["role"] == "wheel")
    return wheels * ENV_EXPANSION


@dataclass(frozen=True, slots=True)
class Upload:
    """The content files to send: one per missing hash, whatever paths share it."""

    files: tuple[dict[str, Any], ...]
    bytes: int
    bundle_bytes: int


def plan_upload(manifest: dict[str, Any], missing: Sequence[str]) -> Upload:
    want = set(missing)
    chosen: dict[str, dict[str, Any]] = {}
    for f in manifest["files"]:
        if f["sha256"] in want and f["sha256"] not in chosen:
            chosen[f["sha256"]] = f
    total = sum(int(f["size"]) for f in manifest["files"])
    return Upload(tuple(chosen.values()), sum(int(f["size"]) for f in chosen.values()), total)


@dataclass(slots=True)
class HealthWatch:
    """Is the new release healthy? Fed what the broker says; decides, never waits itself.

    Healthy means: retained state ``online``, a manifest announcing ``version``, the built-in
    ``_ping`` answered by that release, and (if asked) the user's smoke-test call answered ok.
    """

    version: str
    need_check: bool = False
    online: bool = False
    announced: str | None = None
    pinged: bool = False
    checked: bool = False
    errors: list[str] = field(default_factory=list)

    def saw_device(self, status: str, release: str | None) -> None:
        self.online = status == "online"
        self.announced = release

    @property
    def announced_ok(self) -> bool:
        return self.online and self.announced == self.version

    @property
    def healthy(self) -> bool:
        return self.announced_ok and self.pinged and (self.checked or not self.need_check)

    def missing(self) -> str:
        """What is still missing, for the error message when time runs out."""
        if not self.online:
            return "the device never came online with the new release"
        if self.announced != self.version:
            return f"the device announced release {self.announced}, not {self.version}"
        if not self.pinged:
            return "the agent did not answer _ping"
        if self.need_check and not self.checked:
            last = self.errors[-1] if self.errors else "no answer"
            return f"the smoke-test call failed: {last}"
        return "healthy"
