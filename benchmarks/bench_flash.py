"""Flash: ``edgeagent image flash`` write + verify throughput against ``dd`` + ``sha256sum``.

One run, one image of ``--size-mb`` (incompressible data, in a temporary folder next to the
targets), two targets: a plain file (replaced each round) and, as root with ``losetup``, a loop
device backed by a file (that is how an SD card is stood in for here). Per target and round, in
turn:

- **flash**: ``edgeagent.images.flash_io.flash`` (plan, write in 4 MiB blocks with an
  ``fdatasync`` every 64 MiB, read back from the medium with the page cache dropped, SHA-256
  compared);
- **dd + sha256sum**: ``dd if=IMG of=TARGET bs=4M conv=fsync`` then ``sha256sum`` of the
  written range (of the whole target for a file, ``head -c SIZE`` for the device), as one types
  them: ``sha256sum`` reads whatever the page cache still holds;
- **dd + drop + sha256sum**: the same, with the target's cached pages dropped first
  (``dd iflag=nocache count=0``), so its read-back also comes from the medium, as flash's does;
- **dd + drop + openssl**: the same, hashed with ``openssl dgst -sha256`` (OpenSSL uses the
  CPU's SHA instructions, as Python's hashlib does; Debian 12's coreutils ``sha256sum`` does not,
  and is about 3x slower here): the strongest baseline.

Throughput is image bytes over the seconds of write plus verify (MB = 10^6 bytes); medians over
``--rounds``. The issue's target: flash ≥ 0.9× the baseline's throughput. Prints a table, or
JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from edgeagent.images.flash_io import flash, plan

MiB = 1024 * 1024


def make_image(path: Path, size: int) -> str:
    """Incompressible, reproducible data; its SHA-256."""
    digest = hashlib.sha256()
    block = hashlib.shake_256(b"bench_flash").digest(4 * MiB)
    with open(path, "wb") as f:
        written = 0
        n = 0
        while written < size:
            chunk = hashlib.sha256(n.to_bytes(8, "little")).digest() + block[32:]
            chunk = chunk[: size - written]
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            n += 1
    return digest.hexdigest()


def run_flash(image: Path, target: str, sha: str) -> tuple[float, float]:
    r = flash(plan(str(image), target))
    if r.sha256 != sha or r.verify_seconds is None:
        raise RuntimeError(f"flash wrote {r.sha256}, the image is {sha}")
    return r.write_seconds, r.verify_seconds


HASHERS = {"sha256sum": "sha256sum", "openssl": "openssl dgst -sha256"}


def run_dd(
    image: Path, target: str, sha: str, size: int, drop: bool, hasher: str = "sha256sum"
) -> tuple[float, float]:
    started = time.perf_counter()
    subprocess.run(
        ["dd", f"if={image}", f"of={target}", "bs=4M", "conv=fsync", "status=none"], check=True
    )
    written = time.perf_counter()
    if drop:
        subprocess.run(
            ["dd", f"if={target}", "iflag=nocache", "count=0", "status=none"], check=True
        )
    cmd = HASHERS[hasher]  # a file: hashed whole; a device: only the written range
    command = f"{cmd} {target}" if Path(target).is_file() else f"head -c {size} {target} | {cmd}"
    out = subprocess.run(command, shell=True, capture_output=True, text=True, check=True).stdout
    got = out.split()[-1] if hasher == "openssl" else out.split()[0]
    if got != sha:
        raise RuntimeError(f"dd + {hasher} read back {got}, not {sha}")
    return written - started, time.perf_counter() - written


def loop_device(backing: Path, size: int) -> str | None:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        return None
    with open(backing, "wb") as f:
        f.truncate(size)
    proc = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def measure(
    runs: dict[str, Callable[[], tuple[float, float]]],
    rounds: int,
    size: int,
    before: Callable[[], None],
) -> dict[str, Any]:
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():  # interleaved, so a slow spell hits every method
            before()
            times[name].append(fn())
    out: dict[str, Any] = {}
    for name, samples in times.items():
        write = statistics.median(w for w, _ in samples)
        verify = statistics.median(v for _, v in samples)
        total = statistics.median(w + v for w, v in samples)
        out[name] = {
            "write_mb_s": round(size / 1e6 / write, 1),
            "verify_mb_s": round(size / 1e6 / verify, 1),
            "total_s": round(total, 3),
            "mb_s": round(size / 1e6 / total, 1),
        }
    for name in runs:
        if name != "flash":
            out[name]["flash_x"] = round(out["flash"]["mb_s"] / out[name]["mb_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=512, help="image size, MiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mb * MiB
    results: dict[str, Any] = {
        "machine": common.machine_info(),
        "code": common.code_state(),
        "image_bytes": size,
    }
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_flash.") as tmp:
        folder = Path(tmp)
        image = folder / "image.img"
        sha = make_image(image, size)
        target = folder / "target.img"

        def fresh_file() -> None:
            target.unlink(missing_ok=True)

        results["file"] = measure(
            {
                "flash": lambda: run_flash(image, str(target), sha),
                "dd + sha256sum": lambda: run_dd(image, str(target), sha, size, False),
                "dd + drop + sha256sum": lambda: run_dd(image, str(target), sha, size, True),
                "dd + drop + openssl": lambda: run_dd(
                    image, str(target), sha, size, True, "openssl"
                ),
            },
            args.rounds,
            size,
            fresh_file,
        )
        fresh_file()
        dev = loop_device(folder / "loop.bin", size + 4 * MiB)
        if dev is None:
            results["loop"] = "skipped: needs root and losetup"
        else:
            try:
                results["loop"] = measure(
                    {
                        "flash": lambda: run_flash(image, dev, sha),
                        "dd + sha256sum": lambda: run_dd(image, dev, sha, size, False),
                        "dd + drop + sha256sum": lambda: run_dd(image, dev, sha, size, True),
                        "dd + drop + openssl": lambda: run_dd(
                            image, dev, sha, size, True, "openssl"
                        ),
                    },
                    args.rounds,
                    size,
                    lambda: None,
                )
            finally:
                subprocess.run(["losetup", "-d", dev], check=False)
    if args.json:
        common.print_json(results)
        return
    print(f"image {args.size_mb} MiB, {args.rounds} rounds, medians (MB = 10^6 bytes)")
    print(f"{'target':7} {'method':24} {'write MB/s':>11} {'verify MB/s':>12} {'total s':>8} "
          f"{'MB/s':>7} {'flash ×':>8}")  # fmt: skip
    for kind in ("file", "loop"):
        rows = results[kind]
        if isinstance(rows, str):
            print(f"{kind:7} {rows}")
            continue
        for name, row in rows.items():
            print(
                f"{kind:7} {name:24} {row['write_mb_s']:>11} {row['verify_mb_s']:>12} "
                f"{row['total_s']:>8} {row['mb_s']:>7} {row.get('flash_x', ''):>8}"
            )


if __name__ == "__main__":
    main()
