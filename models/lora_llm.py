"""LoRA adapters for a language model on onnxruntime-genai: the intent model's split (one shared
base, small adapter files; :mod:`.lora_adapter`) applied to a generative model.

onnxruntime-genai's model builder, given a PEFT adapter (``--extra_options adapter_path=DIR``),
bakes the LoRA matrices into the model as initializers named ``….lora_A.MatMul.weight`` [in, r]
and ``….lora_B.MatMul.weight`` [r, out]. :func:`split_adapter` turns such a folder into

- a **base folder**: the same model with those initializers made graph inputs whose defaults have
  rank 0 (so the side path adds nothing: the base generates exactly what the model without an
  adapter does), and every other file of the folder (genai_config.json, tokenizer) copied; two
  adapters built from the same model give byte-identical bases;
- an **adapter file** in edgeagent's format (ORT ``AdapterFormat`` plus the metadata block, with
  the base's digest: :func:`base_digest`), which ``og.Adapters.load`` reads as is.

:func:`load_llm_adapter` checks the digest (:class:`~.lora_adapter.AdapterMismatch` for another
base) and returns the ``og.Adapters`` to pass to ``Generator.set_active_adapter``. Needs
``onnx`` to split (build machine) and ``onnxruntime_genai`` to load (device).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from .lora_adapter import AdapterError, AdapterMeta, AdapterMismatch, read_meta, write_adapter
from .lora_base import LoraBaseError, load_base

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
_A, _B = ".lora_A.", ".lora_B."
_WEIGHT = ".MatMul.weight"


def base_digest(folder: Path) -> str:
    """SHA-256 over the base's graph and weights (``model.onnx`` and its ``.data`` files)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.name.startswith(MODEL_FILE)):
        digest.update(f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def _layer(name: str) -> str:
    return name.split(_A)[0] if _A in name else name.split(_B)[0]


def split_adapter(
    built: Path,
    base_out: Path,
    adapter_out: Path,
    *,
    base_name: str,
    peft_dir: Path,
    examples: int = 0,
    epochs: int = 0,
    seed: int = 0,
) -> AdapterMeta:
    """Split a builder folder with a baked LoRA (see the module doc) into ``base_out`` and
    ``adapter_out``; ``peft_dir`` is the PEFT adapter the builder was given (rank, alpha)."""
    import numpy as np
    from onnx import helper, numpy_helper, save

    model = load_base(built / MODEL_FILE)
    params: dict[str, Any] = {}
    kept = []
    for t in model.graph.initializer:
        if (_A in t.name or _B in t.name) and t.name.endswith(_WEIGHT):
            value = numpy_helper.to_array(t)
            params[t.name] = value
            rows, cols = (value.shape[0], 0) if _A in t.name else (0, value.shape[1])
            dims: list[str | int] = [rows, "rank"] if _A in t.name else ["rank", cols]
            model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, dims))
            kept.append(numpy_helper.from_array(np.zeros((rows, cols), value.dtype), t.name))
        else:
            kept.append(t)
    if not params:
        raise LoraBaseError(
            f"{built}: no baked LoRA weights (…lora_A.MatMul.weight); build the model with "
            "--extra_options adapter_path=PEFT_DIR"
        )
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    base_out.mkdir(parents=True, exist_ok=True)
    for path in built.iterdir():
        if path.is_file() and not path.name.startswith(MODEL_FILE):
            shutil.copyfile(path, base_out / path.name)
    for old in base_out.glob(MODEL_FILE + "*"):
        old.unlink()
    save(model, str(base_out / MODEL_FILE), save_as_external_data=True, location=DATA_FILE)
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    rank = next(int(v.shape[1]) for k, v in params.items() if _A in k)
    meta = AdapterMeta(
        base=base_name,
        base_file=base_out.name,
        base_sha256=base_digest(base_out),
        rank=rank,
        alpha=float(config.get("lora_alpha", rank)),
        targets=tuple(sorted({_layer(k) for k in params})),
        examples=examples,
        replay=0,
        epochs=epochs,
        seed=seed,
    )
    write_adapter(adapter_out, params, meta)
    return meta


def load_llm_adapter(model: Any, base_dir: Path, adapter: Path, name: str = "default") -> Any:
    """``og.Adapters`` holding ``adapter`` as ``name`` for ``model`` (an ``og.Model`` loaded
    from ``base_dir``), after checking it was split from this base."""
    meta = read_meta(adapter)
    digest = base_digest(base_dir)
    if digest != meta.base_sha256:
        raise AdapterMismatch(
            f"{adapter}: made for base {meta.base!r} ({meta.base_file}, digest "
            f"{meta.base_sha256[:12]}…), not for {base_dir} (digest {digest[:12]}…)"
        )
    import onnxruntime_genai as og  # type: ignore[import-untyped, unused-ignore]

    adapters = og.Adapters(model)
    try:
        adapters.load(str(adapter), name)
    except Exception as exc:  # onnxruntime-genai raises RuntimeError
        raise AdapterError(f"{adapter}: onnxruntime-genai cannot load it: {exc}") from exc
    return adapters
