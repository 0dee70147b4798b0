"""LoRA adapters for an onnxruntime-genai language model: a tiny llama (random weights, made in
the test) and a PEFT adapter, built twice by onnxruntime-genai's builder (plain, and with the
adapter baked in); the split base generates exactly what the plain model does, and with the
adapter active exactly what the baked model does."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from edgeagent.models.lora_adapter import AdapterMismatch, read_meta
from edgeagent.models.lora_base import LoraBaseError
from edgeagent.models.lora_llm import base_digest, load_llm_adapter, split_adapter

og = pytest.importorskip("onnxruntime_genai")
PROMPT = "make it cosy"


def _tiny_llama(folder: Path) -> tuple[Path, Path]:
    """A 2-layer llama with a byte-level BPE tokenizer, and a rank-4 PEFT adapter on q/v."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["turn on the kitchen lights", "make it cosy in the den"] * 20, trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call, unused-ignore]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    base, adapter = folder / "hf", folder / "peft"
    fast.save_pretrained(base)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LlamaForCausalLM(config)
        model.save_pretrained(base)
        peft_model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:  # trained-looking: PEFT starts B at zero
                torch.nn.init.normal_(weight, std=0.5)
        peft_model.save_pretrained(str(adapter))
    return base, adapter


def _build(hf: Path, out: Path, cache: Path, adapter: Path | None = None) -> Path:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o",
           str(out), "-p", "fp32", "-e", "cpu", "-c", str(cache)]  # fmt: skip
    if adapter is not None:
        cmd += ["--extra_options", f"adapter_path={adapter}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def _generate(folder: Path, adapter: Path | None = None) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24, do_sample=False)
    generator = og.Generator(model, params)
    if adapter is not None:
        generator.set_active_adapter(load_llm_adapter(model, folder, adapter, "house"), "house")
    generator.append_tokens(og.Tokenizer(model).encode(PROMPT))
    while not generator.is_done():
        generator.generate_next_token()
    return list(generator.get_sequence(0))


@pytest.mark.slow
def test_llm_base_and_adapter_split_from_the_builder(tmp_path: Path) -> None:
    hf, peft_dir = _tiny_llama(tmp_path)
    plain = _build(hf, tmp_path / "plain", tmp_path / "cache")
    baked = _build(hf, tmp_path / "baked", tmp_path / "cache", peft_dir)
    with pytest.raises(LoraBaseError, match="no baked LoRA weights"):
        split_adapter(plain, tmp_path / "x", tmp_path / "x.onnx_adapter", base_name="tiny",
                      peft_dir=peft_dir)  # fmt: skip
    adapter = tmp_path / "house.onnx_adapter"
    meta = split_adapter(baked, tmp_path / "base", adapter, base_name="tiny", peft_dir=peft_dir)
    assert (meta.rank, meta.alpha) == (4, 8.0)
    assert meta.targets == tuple(
        sorted(f"model.layers.{i}.attn.{p}_proj" for i in range(2) for p in "qv")
    )
    assert read_meta(adapter).base_sha256 == base_digest(tmp_path / "base")
    assert adapter.stat().st_size < 12_000
    without = _generate(tmp_path / "base")
    assert without == _generate(plain)  # the base is the plain model
    with_adapter = _generate(tmp_path / "base", adapter)
    assert with_adapter == _generate(baked)  # the adapter is the baked LoRA
    assert with_adapter != without
    with pytest.raises(AdapterMismatch, match="made for base 'tiny'"):
        load_llm_adapter(og.Model(str(plain)), plain, adapter)
