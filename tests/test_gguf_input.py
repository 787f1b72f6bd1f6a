"""MODEL as a GGUF file: a tiny qwen2 GGUF written here (Q8_0 blocks, a byte-level BPE vocabulary and a chat
template) is converted once into a cached float32 safetensors folder equal to what transformers loads from the
GGUF; bad files are one line and leave nothing in the cache."""

from __future__ import annotations

import json
import os

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

import steerfold.models.gguf as gguf_input
from cli import cli
from steerfold.errors import SteerfoldError
from steerfold.models.gguf import convert_gguf, is_gguf_input
from steerfold.hub import resolve_model

LAYERS = 2
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: every byte as a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_tiny_gguf(path, tied: bool = True, seed: int = 0, architecture: str = "qwen2"):
    """A random 2-layer qwen2 as llama.cpp would write it: 2-D weights in Q8_0 blocks, norms and biases in F32."""
    tokens = list(bytes_to_unicode().values()) + ["".join(m) for m in MERGES] + SPECIALS
    vocab = len(tokens)
    config = Qwen2Config(hidden_size=64, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=vocab, max_position_embeddings=128,
                         tie_word_embeddings=tied, rms_norm_eps=1e-6, rope_theta=10000.0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.2)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-qwen2")
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(96)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - len(SPECIALS)) + [3] * len(SPECIALS))
    writer.add_token_merges([" ".join(m) for m in MERGES])
    writer.add_bos_token_id(vocab - 3)
    writer.add_eos_token_id(vocab - 1)
    writer.add_pad_token_id(vocab - 3)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, LAYERS)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        values = tensor.numpy().astype(np.float32)
        if values.ndim == 2 and values.shape[1] % 32 == 0:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(f"{names.get_name(stem)}.{suffix}", gguf.quants.quantize(values, q8), raw_dtype=q8)
        else:
            writer.add_tensor(f"{names.get_name(stem)}.{suffix}", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf")


def cache_is_empty(cache) -> bool:
    return not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text
    return text


def gguf_loaded(path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_converted_folder_is_the_gguf_model(tied, tiny_gguf, tmp_path):
    source = tiny_gguf if tied else write_tiny_gguf(tmp_path / "untied.gguf", tied=False, seed=1)
    said: list[str] = []
    folder = convert_gguf(source, cache_root=tmp_path / "cache", say=said.append)
    assert folder.parent == tmp_path / "cache" / "gguf" and len(folder.name) == 64
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temporary left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # not tempfile's private mode
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert len(said) == 1 and "dequantized" in said[0] and "float32" in said[0] and "MB" in said[0]

    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "quantization_config" not in config and "_name_or_path" not in config
    assert config["tie_word_embeddings"] is tied
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert ("lm_head.weight" in weights.keys()) is not tied
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float32}

    reference, reference_tokenizer = gguf_loaded(source)
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "the cat sat in the hat"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == reference_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>user\n")
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == reference_tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, reference(ids).logits)


def test_second_conversion_reuses_the_cache(tiny_gguf, tmp_path, monkeypatch):
    first = convert_gguf(tiny_gguf, cache_root=tmp_path, say=lambda line: None)
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_input, "_write_conversion", no_conversion)
    said: list[str] = []
    assert convert_gguf(tiny_gguf, cache_root=tmp_path, say=said.append) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert len(said) == 1 and "cached" in said[0]
    assert convert_gguf(tiny_gguf.parent, cache_root=tmp_path, say=lambda line: None) == first  # the folder of one .gguf


def test_default_cache_is_steerfold_cache(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERFOLD_CACHE", str(tmp_path / "env-cache"))
    folder = resolve_model(str(tiny_gguf))  # what every command does with MODEL
    assert folder.parent == tmp_path / "env-cache" / "gguf"
    assert (folder / "model.safetensors").is_file()


def truncate(source, path, keep):
    data = source.read_bytes()
    path.write_bytes(data[: keep if keep > 0 else len(data) + keep])
    return path


BAD = {
    "truncated tensor data": (lambda src, d: truncate(src, d / "cut.gguf", -1000), "cut.gguf is truncated"),
    "truncated metadata": (lambda src, d: truncate(src, d / "cut.gguf", 600), "cut.gguf is truncated"),
    "not gguf": (lambda src, d: (d / "x.gguf").write_bytes(b"PK\x03\x04 a zip, not a model") and d / "x.gguf",
                 "x.gguf is not a GGUF file (no GGUF magic)"),
    "empty": (lambda src, d: (d / "e.gguf").write_bytes(b"") or d / "e.gguf", "e.gguf is not a GGUF file"),
    "missing": (lambda src, d: d / "absent.gguf", "does not exist"),
    "split part": (lambda src, d: truncate(src, d / "m-00001-of-00002.gguf", len(src.read_bytes())),
                   "one part of a split GGUF"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_gguf_is_one_line_and_caches_nothing(case, tiny_gguf, tmp_path):
    make, fragment = BAD[case]
    (tmp_path / "in").mkdir()
    path = make(tiny_gguf, tmp_path / "in")
    with pytest.raises(SteerfoldError) as exc:
        convert_gguf(path, cache_root=tmp_path / "cache", say=lambda line: None)
    assert fragment in one_line(exc)
    assert cache_is_empty(tmp_path / "cache")


def test_sha256_mismatch_is_refused(tiny_gguf, tmp_path):
    with pytest.raises(SteerfoldError) as exc:
        convert_gguf(tiny_gguf, cache_root=tmp_path / "cache", say=lambda line: None, expected_sha256="0" * 64)
    assert "not the expected " + "0" * 64 in one_line(exc) and "SHA-256" in one_line(exc)
    assert cache_is_empty(tmp_path / "cache")
    digest = gguf_input.sha256_file(tiny_gguf)
    assert convert_gguf(tiny_gguf, cache_root=tmp_path / "cache", say=lambda line: None,
                        expected_sha256=digest.upper()).name == digest


def test_architecture_transformers_cannot_load(tmp_path):
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "notamodel")
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SteerfoldError) as exc:
        convert_gguf(path, cache_root=tmp_path / "cache", say=lambda line: None)
    assert "transformers cannot load odd.gguf" in one_line(exc)
    assert cache_is_empty(tmp_path / "cache")


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError(28, "No space left on device")], ids=["ctrl-c", "disk full"])
def test_interrupted_conversion_leaves_nothing(stop, tiny_gguf, tmp_path, monkeypatch):
    def fail(state, out, save_file):
        (out / "model.safetensors").write_bytes(b"partial")
        raise stop

    monkeypatch.setattr(gguf_input, "_save_state", fail)
    with pytest.raises(KeyboardInterrupt if stop is KeyboardInterrupt else SteerfoldError):
        convert_gguf(tiny_gguf, cache_root=tmp_path / "cache", say=lambda line: None)
    assert cache_is_empty(tmp_path / "cache")


def test_is_gguf_input(tiny_gguf, tmp_path):
    assert is_gguf_input(tiny_gguf) and is_gguf_input(tiny_gguf.parent) and is_gguf_input(tmp_path / "absent.GGUF")
    assert not is_gguf_input(tmp_path)  # no .gguf in it
    (tmp_path / "a.gguf").write_bytes(b"")
    assert is_gguf_input(tmp_path)
    (tmp_path / "b.gguf").write_bytes(b"")
    assert not is_gguf_input(tmp_path)  # two of them
    (tmp_path / "b.gguf").unlink()
    (tmp_path / "config.json").write_text("{}")
    assert not is_gguf_input(tmp_path)  # a checkpoint folder that also holds a GGUF


def test_cli_inspect_gguf(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERFOLD_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(cli, ["inspect", str(tiny_gguf)])
    assert result.exit_code == 0, result.output
    assert "architecture      qwen2" in result.output and "dequantized" in result.output


@pytest.mark.parametrize("case", ["truncated tensor data", "not gguf"])
def test_cli_bad_gguf_is_one_line_exit_2(case, tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERFOLD_CACHE", str(tmp_path / "cache"))
    make, fragment = BAD[case]
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(cli, ["inspect", str(make(tiny_gguf, tmp_path / "in"))])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output
    assert "Traceback" not in result.output
    assert cache_is_empty(tmp_path / "cache")
