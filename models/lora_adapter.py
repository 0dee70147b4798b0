"""LoRA adapter files, and a base model loaded with one active.

An adapter file (``.onnx_adapter``) is ONNX Runtime's adapter format (``AdapterFormat``: a
flatbuffer of named tensors) followed by edgeagent's metadata block::

    <AdapterFormat bytes> <metadata: UTF-8 JSON> <its length: 4 bytes little-endian> b"EAADAPT1"

The tensors are ``<layer>.lora_A`` [in, rank] and ``<layer>.lora_B`` [rank, out] (PEFT's scaling
alpha/rank folded into B), the graph inputs of a base made by :mod:`.lora_base`. ORT's reader
verifies the flatbuffer and ignores what follows it, so the file loads as is in
``onnxruntime.LoraAdapter`` (``tests/test_lora.py`` checks that this stays true). The metadata
(:class:`AdapterMeta`) names the base model and the SHA-256 of the base file: an adapter trained
for another base would run without error and answer nonsense, so :func:`load_adapted` refuses it
(:class:`AdapterMismatch`). ORT's own ``model_version`` field carries the first 31 bits of that
hash as well, for tools that read only the flatbuffer.

Errors::

    ModelError
     └── AdapterError          not an adapter file, damaged, too big, unreadable metadata
          └── AdapterMismatch  the adapter was trained for another base file
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .backend import ModelError, RuntimeSettings

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .onnx_backend import OnnxSession

    F32 = npt.NDArray[np.float32]

FORMAT = 1
SUFFIX = ".onnx_adapter"
MAGIC = b"EAADAPT1"
_TRAILER = struct.Struct("<I")
MAX_ADAPTER_BYTES = 64 * 1024 * 1024
"""Adapters are kilobytes; anything this big is not one (bounded before it is read)."""
MAX_META_BYTES = 64 * 1024


class AdapterError(ModelError):
    """Not an adapter file, a damaged one, or one whose metadata cannot be read."""


class AdapterMismatch(AdapterError):
    """The adapter was trained for another base model file."""


class AdapterMeta(BaseModel):
    """What an adapter says about itself (the JSON block after the tensors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = Field(FORMAT, description="Metadata format version.")
    base: str = Field(description="Name of the base model (e.g. intent).")
    base_file: str = Field(description="File name of the LoRA base the adapter was trained on.")
    base_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of that file.")
    rank: int = Field(ge=1, le=256, description="LoRA rank r.")
    alpha: float = Field(gt=0, description="LoRA alpha (scaling alpha/r is folded into B).")
    targets: tuple[str, ...] = Field(min_length=1, description="Adapted layers.")
    examples: int = Field(ge=0, description="Household examples it was trained on.")
    replay: int = Field(ge=0, description="Replayed base training utterances mixed in.")
    epochs: int = Field(ge=0, description="Training epochs.")
    seed: int = Field(description="Training seed.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_version(sha256: str) -> int:
    """ORT's ``model_version`` for a base: the first 31 bits of its SHA-256 (a positive int)."""
    return int(sha256[:8], 16) >> 1


def _ort() -> Any:
    from .onnx_backend import _onnxruntime  # the one place that reports a missing runtime

    return _onnxruntime()


def write_adapter(path: Path, params: Mapping[str, F32], meta: AdapterMeta) -> int:
    """Write ``params`` (in the base's dtype) and ``meta`` to ``path`` (atomically); returns
    the file's size."""
    import numpy as np

    ort = _ort()
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(FORMAT)
    fmt.set_model_version(model_version(meta.base_sha256))
    fmt.set_parameters(
        {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))  # dtype kept
            for name, v in sorted(params.items())
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    fmt.export_adapter(str(tmp))
    block = meta.model_dump_json().encode()
    with tmp.open("ab") as f:
        f.write(block + _TRAILER.pack(len(block)) + MAGIC)
    os.replace(tmp, path)
    return path.stat().st_size


def read_meta(path: Path) -> AdapterMeta:
    """The metadata of an adapter file (no runtime needed)."""
    try:
        size = path.stat().st_size
        if size > MAX_ADAPTER_BYTES:
            raise AdapterError(f"{path}: {size} bytes; an adapter is at most {MAX_ADAPTER_BYTES}")
        with path.open("rb") as f:
            tail_len = _TRAILER.size + len(MAGIC)
            if size < tail_len:
                raise AdapterError(f"{path}: too short to be an adapter ({size} bytes)")
            f.seek(size - tail_len)
            tail = f.read(tail_len)
            if tail[_TRAILER.size :] != MAGIC:
                raise AdapterError(
                    f"{path}: not an edgeagent adapter (no metadata block; write adapters with "
                    "`edgeagent models adapt`)"
                )
            (length,) = _TRAILER.unpack(tail[: _TRAILER.size])
            if length > min(MAX_META_BYTES, size - tail_len):
                raise AdapterError(f"{path}: damaged metadata block (length {length})")
            f.seek(size - tail_len - length)
            block = f.read(length)
    except OSError as exc:
        raise AdapterError(f"{path}: cannot read adapter: {exc.strerror or exc}") from exc
    try:
        return AdapterMeta.model_validate(json.loads(block))
    except (ValueError, ValidationError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise AdapterError(f"{path}: damaged metadata block: {exc}") from exc


def read_parameters(path: Path) -> dict[str, F32]:
    """The adapter's tensors, through ORT's own reader (so a damaged file fails here)."""
    read_meta(path)  # size bound and the metadata block first
    try:
        fmt = _ort().AdapterFormat.read_adapter(str(path))
        return {name: value.numpy() for name, value in fmt.get_parameters().items()}
    except Exception as exc:  # onnxruntime raises RuntimeError for a bad flatbuffer
        raise AdapterError(f"{path}: not a valid ONNX Runtime adapter: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    last = text[0] if text else type(exc).__name__
    return last.rsplit(") ", 1)[-1]  # drop ORT's source-location prefix


def check_base(adapter: Path, meta: AdapterMeta, base: Path) -> None:
    """Refuse an adapter trained for another base file (:class:`AdapterMismatch`)."""
    sha = file_sha256(base)
    if sha != meta.base_sha256:
        raise AdapterMismatch(
            f"{adapter}: trained for base {meta.base!r} ({meta.base_file}, sha256 "
            f"{meta.base_sha256[:12]}…), not for {base} (sha256 {sha[:12]}…); retrain it with "
            f"`edgeagent models adapt` on this base"
        )


def zoo_base(name: str) -> Path:
    """The committed LoRA base of zoo model ``name``: ``models/zoo/NAME/NAME-lora.onnx``."""
    return Path(__file__).resolve().parent / "zoo" / name / f"{name}-lora.onnx"


def resolve_base(spec: str | os.PathLike[str]) -> Path:
    """``zoo:NAME`` → the zoo's LoRA base file; a path → itself (must exist)."""
    text = os.fspath(spec)
    path = zoo_base(text[4:]) if text.startswith("zoo:") else Path(text)
    if not path.is_file():
        hint = " (the zoo has a LoRA base for: intent)" if text.startswith("zoo:") else ""
        raise AdapterError(f"no LoRA base file {path} for {text!r}{hint}")
    return path


def load_adapted(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None,
    settings: RuntimeSettings | None = None,
) -> OnnxSession:
    """The LoRA base ``base`` (``zoo:intent`` or a file) as a session, with ``adapter`` active
    on every run (None: the plain base). What a model skill or the router's model layer runs:
    ``load_adapted("zoo:intent", "household.onnx_adapter").run({"features": x})``."""
    from .onnx_backend import OnnxSession

    base_path = resolve_base(base)
    if adapter is None:
        return OnnxSession(base_path, settings)
    adapter_path = Path(adapter)
    meta = read_meta(adapter_path)
    check_base(adapter_path, meta, base_path)
    read_parameters(adapter_path)  # ORT's verifier: a damaged file is an AdapterError here
    return OnnxSession(base_path, settings, adapter=adapter_path)
