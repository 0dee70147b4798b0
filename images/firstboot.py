"""What Raspberry Pi OS reads at first boot, written the way Raspberry Pi Imager writes it (pure).

Two formats, as Imager has them:

- ``cloudinit`` (Trixie-based images): ``user-data`` (``#cloud-config``: hostname, user with an
  SSH key, timezone, and a ``runcmd`` that runs our first-boot installer), ``network-config``
  (netplan v2: Ethernet by DHCP, Wi-Fi when given) and ``meta-data`` (instance id), with
  ``ds=nocloud`` on the kernel command line;
- ``firstrun`` (Bookworm): ``firstrun.sh`` run once through the kernel command line's
  ``systemd.run=`` hook; the script removes its hook and itself.

Which one an image uses (:func:`detect_format`): **cloud-init** when its boot partition holds a
``user-data`` or ``meta-data`` file, or ``cmdline.txt`` already names the NoCloud datasource
(``ds=nocloud``); otherwise **firstrun**, which needs a ``cmdline.txt`` (without one it is not a
Raspberry Pi OS boot partition, and the build refuses it).

A Wi-Fi passphrase is never written in clear: both formats get the WPA PSK,
PBKDF2-HMAC-SHA1(passphrase, SSID, 4096, 32) as 64 hex digits, which wpa_supplicant,
NetworkManager and netplan accept in place of the passphrase.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field
from typing import Literal

import yaml

from .bootpart import ImageBuildError, NoBootPartition

Format = Literal["cloudinit", "firstrun"]

#: Raspberry Pi Imager's hook, appended to cmdline.txt for the ``firstrun`` format.
CMDLINE_HOOK = (
    "systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot "
    "systemd.unit=kernel-command-line.target"
)
_HOOK_KEYS = ("systemd.run=", "systemd.run_success_action=", "systemd.unit=")
NOCLOUD = "ds=nocloud"
#: Where the boot partition is mounted on Trixie (where cloud-init's runcmd finds our folder).
CLOUDINIT_BOOT = "/boot/firmware"
FOLDER = "edgeagent"
INSTALLER = "edgeagent-firstboot.py"
#: The groups Raspberry Pi OS gives its first user (Imager's list).
PI_GROUPS = (
    "users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo"
)
MAX_CMDLINE = 4096

_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_TIMEZONE = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+){0,3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_SSH_KEY = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-\S+|sk-\S+) [A-Za-z0-9+/=]+( [^\n]*)?$")


@dataclass(frozen=True, slots=True)
class Wifi:
    ssid: str
    psk_hex: str = field(repr=False)  # the WPA PSK, never the passphrase
    country: str


@dataclass(frozen=True, slots=True)
class Settings:
    """What the first boot sets up, checked by :func:`check_settings`."""

    hostname: str
    user: str
    ssh_keys: tuple[str, ...] = ()
    timezone: str | None = None
    wifi: Wifi | None = None
    country: str | None = None


def wpa_psk(passphrase: str, ssid: str) -> str:
    """The WPA PSK for a passphrase: 64 hex digits (a 64-hex passphrase is the PSK already)."""
    if _HEX64.fullmatch(passphrase):
        return passphrase.lower()
    if not 8 <= len(passphrase) <= 63 or not passphrase.isascii() or not passphrase.isprintable():
        raise ImageBuildError(
            "Wi-Fi passphrase: WPA needs 8 to 63 printable ASCII characters (or the 64-hex PSK)"
        )
    raw = hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32)
    return raw.hex()


def check_settings(s: Settings) -> Settings:
    """Every value checked before anything is written (they end up in shell and YAML)."""
    if not _HOSTNAME.fullmatch(s.hostname):
        raise ImageBuildError(
            f"--hostname {s.hostname!r}: use 1-63 lower-case letters, digits and '-'"
        )
    if not _USER.fullmatch(s.user):
        raise ImageBuildError(f"--user {s.user!r}: use a lower-case Linux user name")
    if s.timezone is not None and not _TIMEZONE.fullmatch(s.timezone):
        raise ImageBuildError(f"--timezone {s.timezone!r}: use a tz name such as Europe/Paris")
    for country in (s.country, s.wifi.country if s.wifi else None):
        if country is not None and not _COUNTRY.fullmatch(country):
            raise ImageBuildError(f"--country {country!r}: use a two-letter code such as GB")
    for key in s.ssh_keys:
        if not _SSH_KEY.fullmatch(key):
            raise ImageBuildError(f"--ssh-key: not an OpenSSH public key line: {key[:40]!r}…")
    if s.wifi is not None:
        ssid = s.wifi.ssid
        if not 1 <= len(ssid.encode()) <= 32 or not ssid.isprintable():
            raise ImageBuildError("--wifi-ssid: 1 to 32 bytes of printable text")
        if not _HEX64.fullmatch(s.wifi.psk_hex):
            raise ImageBuildError("Wi-Fi PSK: not 64 hex digits")
    return s


def detect_format(names: list[str], cmdline: str | None) -> tuple[Format, str]:
    """Which first-boot format the boot partition uses, and why (see the module docstring)."""
    lower = {n.lower() for n in names}
    for marker in ("user-data", "meta-data"):
        if marker in lower:
            return "cloudinit", f"the boot partition holds {marker} (cloud-init, Trixie-based)"
    if cmdline is not None and NOCLOUD in cmdline.split():
        return "cloudinit", f"cmdline.txt names {NOCLOUD} (cloud-init)"
    if cmdline is None:
        raise NoBootPartition(
            "the FAT partition has no cmdline.txt and no cloud-init user-data: not a Raspberry "
            "Pi OS boot partition"
        )
    return "firstrun", "no cloud-init files: firstrun.sh with the cmdline.txt hook (Bookworm)"


def _one_line(cmdline: str) -> list[str]:
    lines = [ln for ln in cmdline.splitlines() if ln.strip()]
    if len(cmdline) > MAX_CMDLINE:
        raise ImageBuildError(f"cmdline.txt: {len(cmdline)} bytes, more than {MAX_CMDLINE}")
    if len(lines) > 1:
        raise ImageBuildError(
            f"cmdline.txt has {len(lines)} lines; the firmware reads one: fix it first"
        )
    return lines[0].split() if lines else []


def with_hook(cmdline: str) -> str:
    """cmdline.txt with Imager's ``systemd.run=`` hook exactly once, still one line."""
    tokens = [t for t in _one_line(cmdline) if not t.startswith(_HOOK_KEYS)]
    return " ".join([*tokens, CMDLINE_HOOK]) + "\n"


def with_nocloud(cmdline: str) -> str:
    """cmdline.txt naming the NoCloud datasource once (as Imager's cloud-init format does)."""
    tokens = [t for t in _one_line(cmdline) if t != NOCLOUD]
    return " ".join([*tokens, NOCLOUD]) + "\n"


def installer_command(boot: str) -> list[str]:
    return ["python3", "-S", f"{boot}/{FOLDER}/{INSTALLER}", "--boot", boot]


# cloud-init ------------------------------------------------------------------------------------


def user_data(s: Settings) -> str:
    user: dict[str, object] = {
        "name": s.user,
        "groups": PI_GROUPS,
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": True,
    }
    if s.ssh_keys:
        user["ssh_authorized_keys"] = list(s.ssh_keys)
    data: dict[str, object] = {
        "hostname": s.hostname,
        "manage_etc_hosts": True,
        "users": [user],
        "ssh_pwauth": False,
    }
    if s.timezone:
        data["timezone"] = s.timezone
    runcmd: list[list[str]] = []
    if s.ssh_keys:
        runcmd.append(["systemctl", "enable", "--now", "ssh"])
    runcmd.append(installer_command(CLOUDINIT_BOOT))
    data["runcmd"] = runcmd
    head = "#cloud-config\n# Written by `edgeagent image build`; read once by cloud-init.\n"
    return head + yaml.safe_dump(data, sort_keys=False, width=1000)


def network_config(s: Settings) -> str:
    net: dict[str, object] = {
        "version": 2,
        "ethernets": {"eth0": {"dhcp4": True, "optional": True}},
    }
    if s.wifi is not None:
        wlan: dict[str, object] = {
            "dhcp4": True,
            "optional": True,
            "access-points": {s.wifi.ssid: {"password": s.wifi.psk_hex}},
        }
        if s.wifi.country:
            wlan["regulatory-domain"] = s.wifi.country
        net["wifis"] = {"renderer": "NetworkManager", "wlan0": wlan}
    return yaml.safe_dump({"network": net}, sort_keys=False)


def meta_data(s: Settings, instance_id: str) -> str:
    return yaml.safe_dump(
        {"instance-id": instance_id, "local-hostname": s.hostname}, sort_keys=False
    )


# firstrun.sh -------------------------------------------------------------------------------------


def firstrun_sh(s: Settings) -> str:
    """Imager's Bookworm script (its helpers when present, plain commands otherwise), then our
    installer; finally it removes its hook from cmdline.txt and itself."""
    q = shlex.quote
    name, user = q(s.hostname), q(s.user)
    custom = "/usr/lib/raspberrypi-sys-mods/imager_custom"
    lines = [
        "#!/bin/bash",
        "# Written by `edgeagent image build`; run once at first boot, then removed.",
        "set +e",
        'BOOT=$(dirname "$(readlink -f "$0")")',
        'for d in "$BOOT" /boot/firmware /boot; do',
        '  if [ -f "$d/cmdline.txt" ]; then BOOT=$d; break; fi',
        "done",
        'CURRENT_HOSTNAME=$(tr -d " \\t\\n\\r" </etc/hostname)',
        f"if [ -f {custom} ]; then",
        f"   {custom} set_hostname {name}",
        "else",
        f"   echo {name} >/etc/hostname",
        f'   sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\t"{name}"/g" /etc/hosts',
        "fi",
        "FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)",
        "if [ -f /usr/lib/userconf-pi/userconf ]; then",
        f"   /usr/lib/userconf-pi/userconf {user} '*'",
        f'elif [ -n "$FIRSTUSER" ] && [ "$FIRSTUSER" != {user} ]; then',
        f'   usermod -l {user} "$FIRSTUSER"',
        f"   usermod -m -d /home/{s.user} {user}",
        f'   groupmod -n {user} "$FIRSTUSER"',
        "fi",
    ]
    if s.ssh_keys:
        keys = " ".join(q(k) for k in s.ssh_keys)
        lines += [
            f"if [ -f {custom} ]; then",
            f"   {custom} enable_ssh -k {keys}",
            "else",
            f"   install -o {user} -m 700 -d /home/{s.user}/.ssh",
            f"   printf '%s\\n' {keys} >/home/{s.user}/.ssh/authorized_keys",
            f"   chown {user}: /home/{s.user}/.ssh/authorized_keys",
            f"   chmod 600 /home/{s.user}/.ssh/authorized_keys",
            "   echo 'PasswordAuthentication no' >>/etc/ssh/sshd_config",
            "   systemctl enable ssh",
            "fi",
        ]
    if s.wifi is not None:
        ssid, psk, cc = q(s.wifi.ssid), s.wifi.psk_hex, q(s.wifi.country)
        lines += [
            f"if [ -f {custom} ]; then",
            f"   {custom} set_wlan {ssid} {psk} {cc}",
            "else",
            "   install -m 600 /dev/null /etc/wpa_supplicant/wpa_supplicant.conf",
            "   cat >/etc/wpa_supplicant/wpa_supplicant.conf <<'WPAEOF'",
            f"country={s.wifi.country}",
            "ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev",
            "ap_scan=1",
            "update_config=1",
            "network={",
            f"\tssid={_wpa_ssid(s.wifi.ssid)}",
            f"\tpsk={psk}",
            "}",
            "WPAEOF",
            "   rfkill unblock wifi",
            '   for f in /var/lib/systemd/rfkill/*:wlan; do echo 0 >"$f"; done',
            "fi",
        ]
    elif s.country:
        lines += [f"raspi-config nonint do_wifi_country {q(s.country)} || true"]
    if s.timezone:
        tz = q(s.timezone)
        lines += [
            f"if [ -f {custom} ]; then",
            f"   {custom} set_timezone {tz}",
            "else",
            "   rm -f /etc/localtime",
            f"   echo {tz} >/etc/timezone",
            "   dpkg-reconfigure -f noninteractive tzdata",
            "fi",
        ]
    installer = " ".join(f'"{a}"' if "$" in a else q(a) for a in installer_command("$BOOT"))
    lines += [
        f"{installer} >>/var/log/edgeagent-firstboot.log 2>&1",
        "chmod 600 /var/log/edgeagent-firstboot.log",
        f"sed -i 's| {CMDLINE_HOOK}||g' \"$BOOT/cmdline.txt\"",
        # This script holds the Wi-Fi PSK: overwritten before it is removed (FAT keeps freed
        # clusters). Last, and on one line: bash reads a script as it runs, and a whole line
        # before running it, so nothing is read from the file once shred has overwritten it.
        'shred -u "$BOOT/firstrun.sh" 2>/dev/null || rm -f "$BOOT/firstrun.sh"; exit 0',
    ]
    return "\n".join(lines) + "\n"


def _wpa_ssid(ssid: str) -> str:
    """An SSID for wpa_supplicant.conf: quoted when plain, else as hex (no quoting problems)."""
    if ssid.isascii() and '"' not in ssid and "\\" not in ssid:
        return f'"{ssid}"'
    return ssid.encode().hex()
