"""Deploy jobs for the CLI: many hosts with bounded parallelism, and the ``--watch`` dev loop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .bundle import BuildOptions, build_bundle
from .deployer import DeployOptions, deploy
from .errors import DeployError, HealthCheckFailed
from .ssh import SshError, SshOptions, SshTarget, connect
from .wheelhouse import default_cache

Echo = Callable[[str], None]


def parse_check(text: str | None) -> tuple[str, dict[str, Any]] | None:
    """``'SKILL {"json": 1}'`` → (skill, input)."""
    if not text:
        return None
    skill, _, rest = text.strip().partition(" ")
    try:
        data = json.loads(rest) if rest.strip() else {}
    except ValueError as exc:
        raise DeployError(f"--check: the input after {skill!r} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DeployError("--check: the input must be a JSON object")
    return skill, data


@dataclass(slots=True)
class DeployJob:
    target: SshTarget
    options: DeployOptions
    config: Path | None
    bundle: Path | None
    key: Path
    python: str | None = None

    @classmethod
    def from_cli(
        cls,
        hosts: Sequence[str],
        inventory: Path | None,
        config: Path | None,
        bundle: Path | None,
        device: str,
        key: Path,
        trust: list[Path],
        root: str,
        broker: str | None,
        health_timeout: float,
        check: tuple[str, dict[str, Any]] | None,
        keep: int,
        python: str | None,
    ) -> list[DeployJob]:
        base = DeployOptions(
            device=device,
            root=root,
            broker=broker,
            health_timeout=health_timeout,
            check=check,
            trust=trust,
            keep=keep,
        )
        jobs = [cls(SshTarget.parse(h), replace(base), config, bundle, key, python) for h in hosts]
        if inventory is not None:
            jobs += cls._inventory(inventory, base, config, bundle, key, python)
        return jobs

    @classmethod
    def _inventory(
        cls,
        path: Path,
        base: DeployOptions,
        config: Path | None,
        bundle: Path | None,
        key: Path,
        python: str | None,
    ) -> list[DeployJob]:
        data = yaml.safe_load(path.read_text())
        entries = data.get("hosts") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise DeployError(f"{path}: expected a list of hosts (or {{hosts: [...]}})")
        jobs = []
        for i, e in enumerate(entries):
            if isinstance(e, str):
                e = {"host": e}
            if not isinstance(e, dict) or "host" not in e:
                raise DeployError(f"{path}: hosts[{i}]: needs `host`")
            unknown = set(e) - {"host", "config", "device", "check"}
            if unknown:
                raise DeployError(f"{path}: hosts[{i}]: unknown keys {sorted(unknown)}")
            cfg = (path.parent / e["config"]) if "config" in e else config
            if cfg is None and bundle is None:
                raise DeployError(f"{path}: hosts[{i}]: no config (give CONFIG or `config:`)")
            opts = replace(base, device=str(e.get("device", base.device)))
            if "check" in e:
                opts.check = parse_check(str(e["check"]))
            jobs.append(cls(SshTarget.parse(str(e["host"])), opts, cfg, bundle, key, python))
        return jobs

    def bundle_builder(self) -> Path | Callable[[str], Any]:
        if self.bundle is not None:
            return self.bundle
        config = self.config
        assert config is not None

        async def build(profile: str) -> Path:
            key = hashlib.sha256(f"{config.resolve()}|{profile}".encode()).hexdigest()[:12]
            out = default_cache() / "bundles" / f"{config.stem}-{profile}-{key}"
            opts = BuildOptions(python=self.python)
            built = await asyncio.to_thread(
                build_bundle, config, profile, out, key=self.key, options=opts
            )
            return built.folder

        return build


async def run_jobs(
    jobs: Sequence[DeployJob], ssh: SshOptions, *, parallel: int, as_json: bool, echo: Echo
) -> list[dict[str, Any]]:
    """Deploy every job, at most ``parallel`` at once; one progress line per device and step."""
    sem = asyncio.Semaphore(max(1, parallel))
    results: list[dict[str, Any]] = []

    async def one(job: DeployJob) -> None:
        name = str(job.target)

        def progress(step: str, msg: str) -> None:
            if as_json:
                echo(json.dumps({"host": name, "step": step, "message": msg}))
            else:
                echo(f"[{name}] {step}: {msg}")

        async with sem:
            try:
                r = await deploy(job.bundle_builder(), job.target, ssh, job.options, progress)
                out = {"host": name, **r.as_dict()}
            except HealthCheckFailed as exc:
                out = {
                    "host": name,
                    "healthy": False,
                    "error": str(exc),
                    "rolled_back_to": exc.rolled_back_to,
                    "logs": exc.logs,
                }
                if not as_json and exc.logs:
                    echo(f"[{name}] last log lines of the failed release:")
                    for line in exc.logs.splitlines()[-20:]:
                        echo(f"[{name}]   {line}")
            except (DeployError, SshError, OSError) as exc:
                out = {"host": name, "healthy": False, "error": str(exc)}
            except Exception as exc:  # a signature error or anything else: reported per host
                out = {"host": name, "healthy": False, "error": f"{type(exc).__name__}: {exc}"}
        results.append(out)
        if as_json:
            echo(json.dumps({"result": out}, default=str))
        elif out.get("healthy"):
            echo(
                f"[{name}] healthy: {out['version']} (sent {out['sent_files']} files, "
                f"{out['sent_bytes']:,} of {out['bundle_bytes']:,} bytes, "
                f"{out['timings'].get('done', 0):.1f} s)"
            )
        else:
            echo(f"[{name}] FAILED: {out['error']}")

    await asyncio.gather(*(one(j) for j in jobs))
    return results


def watched_files(config: Path) -> list[Path]:
    """The config and every file of the skill modules next to it (what a bundle ships)."""
    from ..config import load_config
    from .bundle import top_module_files

    cfg = load_config(config)
    base = cfg.base_dir or config.resolve().parent
    files = [config.resolve()]
    for src in cfg.skills:
        files.extend(p for p, _ in top_module_files(base, src.module))
    return sorted(set(files))


def _snapshot(files: Sequence[Path]) -> dict[Path, tuple[int, int]]:
    out = {}
    for p in files:
        try:
            st = p.stat()
            out[p] = (st.st_mtime_ns, st.st_size)
        except OSError:
            out[p] = (0, -1)
    return out


async def watch_loop(
    job: DeployJob,
    ssh: SshOptions,
    *,
    as_json: bool,
    echo: Echo,
    poll_s: float = 0.2,
    max_rounds: int | None = None,
) -> int:
    """Deploy, then redeploy on every saved change, over one SSH connection, until Ctrl-C.

    Each round prints the time from the save to "healthy on the device"."""
    assert job.config is not None
    rounds = 0
    async with await connect(job.target, ssh) as session:
        last = _snapshot(watched_files(job.config))
        saved_at = time.time()
        while True:
            t0 = time.monotonic()
            try:
                r = await deploy(
                    job.bundle_builder(),
                    job.target,
                    ssh,
                    job.options,
                    lambda s, m: None,
                    session=session,
                )
                took = time.time() - saved_at
                line = {
                    "healthy": True,
                    "version": r.version,
                    "sent_files": r.sent_files,
                    "sent_bytes": r.sent_bytes,
                    "save_to_healthy_s": round(took, 3),
                }
                echo(
                    json.dumps(line)
                    if as_json
                    else f"healthy: {r.version} ({r.sent_files} files, {r.sent_bytes:,} bytes) "
                    f"{took:.1f} s after the save"
                )
            except (DeployError, SshError) as exc:
                echo(
                    json.dumps({"healthy": False, "error": str(exc)})
                    if as_json
                    else f"FAILED after {time.monotonic() - t0:.1f} s: {exc}"
                )
            rounds += 1
            if max_rounds is not None and rounds >= max_rounds:
                return 0
            if not as_json:
                echo("watching for changes (Ctrl-C stops)…")
            while True:
                await asyncio.sleep(poll_s)
                files = watched_files(job.config)
                now = _snapshot(files)
                if now != last:
                    changed = [p for p in now if now[p] != last.get(p)]
                    saved_at = max(
                        (p.stat().st_mtime for p in changed if p.exists()), default=time.time()
                    )
                    last = now
                    if not as_json:
                        echo(f"changed: {', '.join(os.path.basename(p) for p in changed)}")
                    break
