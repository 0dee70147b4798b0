"""Release bundles: everything one device needs to run one agent config, offline, signed.

A bundle is a folder::

    bundle.json            format, release version, device, profile, platform, every file with
                           its path in the release, size, SHA-256 and role; skills and models
    bundle.json.minisig    minisign signature of bundle.json (Ed25519 over BLAKE2b-512)
    files/<sha256>         the content files, named by hash

The release version is ``{edgeagent version}+{first 12 hex of the content hash}``, the content hash
being the SHA-256 of bundle.json's canonical form without the version: the same inputs give the
same bytes, the same version and (Ed25519 being deterministic) the same signature. A change in
one skill file changes that file's entry only, and a deploy sends only the files a device lacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..config import AgentConfig, load_config
from ..devices import DeviceProfile, load_profile
from ..errors import ConfigError, EdgeAgentError
from . import devicetool
from .devicetool import file_sha256
from .errors import BundleError, BundleInvalid, KeyFileError
from .wheelhouse import (
    Platform,
    default_cache,
    edgeagent_wheel,
    resolve_wheels,
    wheel_requirements,
)

BUNDLE_FORMAT = devicetool.BUNDLE_FORMAT
_SKIP_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".venv", "node_modules"}
_MAX_APP_FILES = 5000
_MODEL_SUFFIX_RUNTIME = {".onnx": "onnx", ".ort": "onnx", ".tflite": "tflite"}


@dataclass(slots=True)
class _Entry:
    path: str
    source: Path | None
    role: str
    data: bytes | None = None
    sha256: str = ""
    size: int = 0


@dataclass(frozen=True, slots=True)
class BuiltBundle:
    folder: Path
    version: str
    manifest: dict[str, Any]
    signed_by: str | None

    @property
    def total_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"])


@dataclass(slots=True)
class BuildOptions:
    python: str | None = None
    cache: Path | None = None
    refresh_wheels: bool = False
    import_skills: bool = True
    extra_requirements: list[str] = field(default_factory=list)
    log: Callable[[str], None] = lambda _: None


def top_module_files(base: Path, module: str) -> list[tuple[Path, str]]:
    """The files of the top-level module or package ``module`` lives in, next to the config."""
    top = module.split(":", 1)[0].split(".", 1)[0]
    pkg, single = base / top, base / f"{top}.py"
    if pkg.is_dir():
        out: list[tuple[Path, str]] = []
        for dirpath, dirnames, filenames in os.walk(pkg):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and d[0] != ".")
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                    continue
                p = Path(dirpath) / name
                out.append((p, "app/" + p.relative_to(base).as_posix()))
        if len(out) > _MAX_APP_FILES:
            raise BundleError(f"{pkg}: {len(out)} files, more than {_MAX_APP_FILES}")
        return out
    if single.is_file():
        return [(single, f"app/{top}.py")]
    if top == "edgeagent":
        return []  # shipped in edgeagent's wheel
    raise BundleError(
        f"skill module {module!r}: no {top}/ or {top}.py next to the config ({base}); "
        "a bundle ships the skill modules that sit next to their config"
    )


def _model_specs(cfg: AgentConfig, sets: Sequence[object]) -> list[dict[str, Any]]:
    """The models the skill sets loaded (when imported), as resolved for the profile."""
    from ..models.skillset import ModelSkillSet

    out = []
    for s in sets:
        if isinstance(s, ModelSkillSet):
            r = s.resolved
            out.append({"name": r.name, "version": r.version, "variant": r.variant, "path": r.path})
    return out


def _skill_names(cfg: AgentConfig, log: Callable[[str], None]) -> tuple[list[str], list[object]]:
    from ..config import load_skills

    try:
        skills, sets, _ = load_skills(cfg)
    except (EdgeAgentError, Exception) as exc:
        raise BundleError(
            f"the config's skills do not load on this machine: {exc}\n"
            "(pass --no-import-check to bundle them anyway, e.g. when they need hardware "
            "only the device has)"
        ) from exc
    for s in sets:
        close = getattr(s, "close", None)
        if callable(close):
            close()
    return sorted(s.name for s in skills), list(sets)


def _ship_models(
    raw_cfg: dict[str, Any], base: Path, config_path: Path, entries: dict[str, _Entry]
) -> set[str]:
    """Add the models and LoRA adapters the config names by path to ``entries`` (under
    app/models/) and point ``raw_cfg``'s options at them there; the runtime extras the shipped
    models need."""
    extras: set[str] = set()
    for i, src in enumerate(raw_cfg.get("skills") or []):
        model = (src.get("options") or {}).get("model") if isinstance(src, dict) else None
        if isinstance(model, str) and not model.startswith("zoo:"):
            p = Path(model) if Path(model).is_absolute() else base / model
            if not p.exists():
                raise BundleError(f"{config_path}: skills.{i}.options.model: {model} not found")
            model_files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
            root = p if p.is_dir() else p.parent
            rel_dest = f"models/{p.name}"
            for f in model_files:
                rel = rel_dest if p.is_file() else f"{rel_dest}/{f.relative_to(root).as_posix()}"
                entries["app/" + rel] = _Entry("app/" + rel, f, "model")
                extras.update(e for s, e in _MODEL_SUFFIX_RUNTIME.items() if f.suffix == s)
            src["options"]["model"] = rel_dest
        elif isinstance(model, str):
            extras.add("onnx")
        adapter = (src.get("options") or {}).get("adapter") if isinstance(src, dict) else None
        if isinstance(adapter, str):  # a LoRA adapter: the base stays where the model is
            p = Path(adapter) if Path(adapter).is_absolute() else base / adapter
            if not p.is_file():
                raise BundleError(f"{config_path}: skills.{i}.options.adapter: {adapter} not found")
            entries[f"app/models/{p.name}"] = _Entry(f"app/models/{p.name}", p, "model")
            src["options"]["adapter"] = f"models/{p.name}"
    return extras


def _hash_entries(entries: Iterable[_Entry]) -> None:
    """Fill in each entry's sha256 and size, from its data or its source file."""
    for e in entries:
        if e.data is not None:
            e.sha256, e.size = hashlib.sha256(e.data).hexdigest(), len(e.data)
        else:
            assert e.source is not None
            e.sha256, e.size = file_sha256(e.source), e.source.stat().st_size


def _write_store(store: Path, entries: list[_Entry]) -> None:
    """The files by hash: stale ones removed, missing ones written (atomically), present ones
    of the right size left alone (a rebuild copies only what changed)."""
    store.mkdir(exist_ok=True)
    wanted = {e.sha256 for e in entries}
    for stale in store.iterdir():
        if stale.name not in wanted:
            stale.unlink()
    for e in entries:
        dest = store / e.sha256
        if dest.is_file() and dest.stat().st_size == e.size:
            continue
        tmp = dest.with_name(dest.name + ".tmp")
        if e.data is not None:
            tmp.write_bytes(e.data)
        else:
            assert e.source is not None
            shutil.copyfile(e.source, tmp)
        os.replace(tmp, dest)


def build_bundle(
    config_path: Path,
    profile_name: str,
    out: Path,
    *,
    key: Path | None = None,
    options: BuildOptions | None = None,
) -> BuiltBundle:
    """Build (and sign, when ``key`` is given) the bundle for one agent config and profile."""
    opts = options or BuildOptions()
    try:
        cfg = load_config(config_path)
        profile = load_profile(profile_name)
    except ConfigError as exc:
        raise BundleError(str(exc)) from exc
    if cfg.profile and cfg.profile != profile.name:
        opts.log(
            f"{config_path}: the config says profile {cfg.profile}; the bundle is for "
            f"{profile.name} (the device's), so its config says {profile.name}"
        )
    cfg = cfg.model_copy(update={"profile": profile.name})
    base = cfg.base_dir or config_path.resolve().parent
    platform = Platform(profile.arch, opts.python or profile.python)
    cache = opts.cache or default_cache()
    secret = _load_secret(key) if key is not None else None

    entries: dict[str, _Entry] = {}
    for src in cfg.skills:
        for source, path in top_module_files(base, src.module):
            entries[path] = _Entry(path, source, "app")

    skills: list[str] | None = None
    models: list[dict[str, Any]] = []
    if opts.import_skills:
        skills, sets = _skill_names(cfg, opts.log)
        models = _model_specs(cfg, sets)

    # Models referenced by path in the options: shipped under app/models/, options rewritten.
    raw_cfg = yaml.safe_load(config_path.read_text())
    if not isinstance(raw_cfg, dict):
        raise BundleError(f"{config_path}: not a YAML mapping")
    raw_cfg["profile"] = profile.name
    extras = _ship_models(raw_cfg, base, config_path, entries)
    for m in models:
        extras.update(e for s, e in _MODEL_SUFFIX_RUNTIME.items() if Path(m["path"]).suffix == s)
    config_text = yaml.safe_dump(raw_cfg, sort_keys=False)
    entries["app/agent.yaml"] = _Entry("app/agent.yaml", None, "config", config_text.encode())

    # Wheels: edgeagent's own plus everything it needs on this platform.
    own = edgeagent_wheel(cache, opts.log)
    reqs = wheel_requirements(own, sorted(extras)) + list(opts.extra_requirements)
    wheels = resolve_wheels(reqs, platform, cache, refresh=opts.refresh_wheels, log=opts.log)
    for w in [own, *(w.path for w in wheels)]:
        entries[f"wheels/{w.name}"] = _Entry(f"wheels/{w.name}", w, "wheel")

    _hash_entries(entries.values())
    files = [
        {"path": e.path, "sha256": e.sha256, "size": e.size, "role": e.role}
        for e in sorted(entries.values(), key=lambda e: e.path)
    ]
    env_id = hashlib.sha256(
        "\n".join(f"{f['path']} {f['sha256']}" for f in files if f["role"] == "wheel").encode()
    ).hexdigest()
    manifest: dict[str, Any] = {
        "kind": devicetool.BUNDLE_KIND,
        "format": BUNDLE_FORMAT,
        "edgeagent_version": __version__,
        "device": cfg.device,
        "fleet": cfg.fleet,
        "profile": profile.name,
        "platform": {
            "arch": platform.arch,
            "python": platform.python,
            "tags": platform.pip_platforms(),
        },
        "config": "app/agent.yaml",
        "env": env_id,
        "skills": skills,
        "models": [
            {
                "name": m["name"],
                "version": m["version"],
                "variant": m["variant"],
                "file": _model_location(Path(m["path"]), base),
            }
            for m in models
        ],
        "files": files,
    }
    content = hashlib.sha256(_canonical(manifest)).hexdigest()
    manifest["content_sha256"] = content
    manifest["version"] = f"{__version__}+{content[:12]}"
    raw = _canonical(manifest, indent=True)

    out.mkdir(parents=True, exist_ok=True)
    _write_store(out / "files", list(entries.values()))
    (out / "bundle.json").write_bytes(raw)
    sig_path = out / "bundle.json.minisig"
    signed_by = None
    if secret is not None:
        from . import minisign

        sig = minisign.sign(
            raw,
            secret,
            trusted_comment=f"edgeagent bundle {manifest['version']} device={cfg.device} "
            f"profile={profile.name}",
        )
        sig_path.write_text(sig)
        signed_by = secret_key_id(secret)
    elif sig_path.exists():
        sig_path.unlink()
    return BuiltBundle(out, manifest["version"], manifest, signed_by)


def _model_location(path: Path, base: Path) -> str:
    try:
        return "app/models/" + path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        pass
    parts = path.resolve().parts
    if "zoo" in parts:
        i = len(parts) - 1 - parts[::-1].index("zoo")
        return "edgeagent wheel: edgeagent/models/zoo/" + "/".join(parts[i + 1 :])
    return path.name


def _canonical(data: dict[str, Any], indent: bool = False) -> bytes:
    if indent:
        return (json.dumps(data, indent=1, sort_keys=True, ensure_ascii=True) + "\n").encode()
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# keys ----------------------------------------------------------------------------------------


def _load_secret(path: Path) -> Any:
    from . import minisign

    try:
        return minisign.SecretKey.from_file(path)
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"{path}: no such signing key (make one with `edgeagent keys generate`)"
        ) from exc
    except minisign.SignatureError as exc:
        raise KeyFileError(str(exc)) from exc


def secret_key_id(secret: Any) -> str:
    return str(secret.public_key().key_id_hex)


def load_trusted(paths: Sequence[Path]) -> list[Any]:
    from . import minisign

    keys = []
    for p in paths:
        try:
            keys.append(minisign.PublicKey.from_file(p))
        except FileNotFoundError as exc:
            raise KeyFileError(f"{p}: no such public key") from exc
        except minisign.SignatureError as exc:
            raise KeyFileError(str(exc)) from exc
    return keys


# verify / inspect ----------------------------------------------------------------------------


def read_manifest(folder: Path) -> tuple[dict[str, Any], bytes]:
    try:
        raw = (folder / "bundle.json").read_bytes()
    except FileNotFoundError:
        raise BundleInvalid(f"{folder}: no bundle.json (not a bundle folder)") from None
    try:
        return devicetool.check_manifest(raw), raw
    except devicetool.Refused as exc:
        raise BundleInvalid(f"{folder}: {exc}") from exc


def verify_bundle(
    folder: Path,
    trusted: Sequence[Path],
    *,
    profile: DeviceProfile | None = None,
    arch: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Check signature, shape, every file, and optionally the profile and architecture.

    Returns (manifest, signer key id). Raises :class:`BundleInvalid` naming the file and why.
    """
    from . import minisign

    data, raw = read_manifest(folder)
    sig_path = folder / "bundle.json.minisig"
    if not sig_path.is_file():
        raise BundleInvalid(f"{sig_path}: missing: the bundle is unsigned")
    keys = load_trusted(trusted)
    if not keys:
        raise BundleInvalid("no trusted public key given (--key PUB)")
    try:
        verified = minisign.verify(raw, sig_path.read_text(errors="replace"), keys)
    except minisign.SignatureError as exc:
        raise BundleInvalid(f"{sig_path}: {exc}") from exc
    try:
        devicetool.check_files(data, folder / "files")
    except devicetool.Refused as exc:
        raise BundleInvalid(f"{folder}: {exc}") from exc
    if profile is not None and data["profile"] != profile.name:
        raise BundleInvalid(f"bundle is for profile {data['profile']}, not {profile.name}")
    if arch is not None and data["platform"]["arch"] != arch:
        raise BundleInvalid(f"bundle is for {data['platform']['arch']}, not {arch}")
    return data, str(verified.key_id_hex)


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """What ``bundle inspect`` shows: sizes by role, skills, models."""
    by_role: dict[str, dict[str, int]] = {}
    for f in data["files"]:
        r = by_role.setdefault(f["role"], {"files": 0, "bytes": 0})
        r["files"] += 1
        r["bytes"] += f["size"]
    return {
        "version": data["version"],
        "device": data["device"],
        "fleet": data.get("fleet"),
        "profile": data["profile"],
        "platform": data["platform"],
        "skills": data.get("skills"),
        "models": data.get("models", []),
        "roles": by_role,
        "total_bytes": sum(f["size"] for f in data["files"]),
    }
