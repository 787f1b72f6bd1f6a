"""Where and in which precision a model runs: one specification (``Placement``) shared by ``fit``, ``validate``,
``run`` (the recipe's ``model:`` section), the judge and the studies. Placing blocks across devices, on the CPU and
on disk is accelerate's big-model dispatch; this module only turns the user's words into its arguments. No torch
at import."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from steerfold.errors import BadInput
from steerfold.options import Words, first_error_line, vocabulary

DTYPES = ("bfloat16", "float16", "float32")
MEMORY = re.compile(r"^(\d+|cpu|disk|mps|cuda:\d+)=(\d+(?:\.\d+)?)\s*([KMGT]i?B)$", re.I)


class Placement(BaseModel):
    """How a model is loaded: its device, its dtype, a device map across GPUs, CPU and disk, quantized loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Annotated[str, Words("Where the model runs: auto (the GPU when there is one), cpu, cuda, cuda:N or mps.",
                                 flag="--device", recipe="model.device")] = "auto"
    dtype: Annotated[Literal["auto", "bfloat16", "float16", "float32"], Words(
        "Weights' dtype while running: auto = the checkpoint's own on an accelerator, float32 on the CPU. "
        "Activations and directions are kept in float32 (sums over prompts in float64) whatever it is.",
        flag="--dtype", recipe="model.dtype")] = "auto"
    device_map: Annotated[Literal["auto", "balanced", "sequential"] | None, Words(
        "Spread the blocks over every GPU, the CPU and disk (accelerate's big-model dispatch), within --max-memory.",
        flag="--device-map", recipe="model.device_map")] = None
    max_memory: Annotated[str | None, Words(
        "Memory each device may hold with --device-map, e.g. 0=70GiB,1=70GiB,cpu=100GiB.", flag="--max-memory",
        recipe="model.max_memory", metavar="DEVICE=SIZE,…")] = None
    offload_folder: Annotated[Path | None, Words(
        "Folder for the blocks that fit on no device with --device-map (read back block by block).",
        flag="--offload-folder", recipe="model.offload_folder", metavar="DIR")] = None
    load_in: Annotated[Literal["4bit", "8bit"] | None, Words(
        "Load the weights quantized through bitsandbytes (a CUDA GPU and pip install bitsandbytes).",
        flag="--load-in", recipe="model.load_in")] = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"'{value}' is not a device: write auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("max_memory")
    @classmethod
    def _memory_map(cls, value: str | None) -> str | None:
        if value is not None:
            memory_map(value)
        return value

    def resolved_device(self) -> str:
        """The device ``auto`` means here: a CUDA GPU, else Apple's GPU, else the CPU; a named GPU that is not here
        is refused."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BadInput(f"--device {self.device}: no CUDA GPU is visible to torch here: pass --device cpu (or auto)")
        if self.device == "mps" and not torch.backends.mps.is_available():
            raise BadInput("--device mps: Apple's GPU is not available to torch here: pass --device cpu (or auto)")
        return self.device

    def resolved_dtype(self, device: str, checkpoint_dtype: str | None) -> str:
        """``auto``: the checkpoint's own dtype on an accelerator (float32 if it records none), float32 on the CPU."""
        if self.dtype != "auto":
            return self.dtype
        if device == "cpu":
            return "float32"
        return checkpoint_dtype if checkpoint_dtype in DTYPES else "float32"

    def check_quantization(self, device: str) -> None:
        """bitsandbytes quantized loading needs the package and a CUDA GPU: one line naming what is missing."""
        if self.load_in is None:
            return
        if importlib.util.find_spec("bitsandbytes") is None:
            raise BadInput(f"--load-in {self.load_in} needs bitsandbytes: pip install 'steerfold[quantized]' "
                           "(or bitsandbytes), or drop --load-in")
        if not device.startswith("cuda"):
            raise BadInput(f"--load-in {self.load_in} runs on a CUDA GPU and the model would run on {device}: "
                           "drop --load-in, or run where a GPU is")

    def check(self) -> None:
        """Refuse, before anything is loaded or written, a device that is not here or quantization that cannot run."""
        self.check_quantization(self.resolved_device())

    def from_pretrained_arguments(self, checkpoint_dtype: str | None) -> tuple[dict[str, Any], dict[str, str]]:
        """transformers' ``from_pretrained`` arguments (accelerate places the blocks), and what was chosen, for the
        direction file's metadata and the report."""
        import torch

        device = self.resolved_device()
        self.check_quantization(device)
        dtype = self.resolved_dtype(device, checkpoint_dtype)
        arguments: dict[str, Any] = {"dtype": getattr(torch, dtype)}
        if self.device_map is not None:
            arguments["device_map"] = self.device_map
            if self.max_memory:
                arguments["max_memory"] = memory_map(self.max_memory)
            if self.offload_folder is not None:
                arguments["offload_folder"] = str(self.offload_folder)
        elif device != "cpu":
            arguments["device_map"] = {"": device}
        if self.load_in is not None:
            from transformers import BitsAndBytesConfig

            arguments["quantization_config"] = BitsAndBytesConfig(load_in_4bit=self.load_in == "4bit",
                                                                  load_in_8bit=self.load_in == "8bit")
        chosen = {"device": device, "dtype": dtype, "device_map": self.device_map, "max_memory": self.max_memory,
                  "load_in": self.load_in}
        return arguments, {key: str(value) for key, value in chosen.items() if value}


def memory_map(text: str) -> dict[int | str, str]:
    """``0=70GiB,1=70GiB,cpu=100GiB`` → accelerate's ``max_memory`` (GPU indices as ints)."""
    memory: dict[int | str, str] = {}
    for part in text.split(","):
        match = MEMORY.match(part.strip())
        if not match:
            raise ValueError(f"'{part.strip()}' in '{text}' is not DEVICE=SIZE: write e.g. 0=70GiB,1=70GiB,cpu=100GiB")
        device, number, unit = match.groups()
        memory[int(device) if device.isdigit() else device.lower()] = f"{number}{unit.upper().replace('IB', 'iB')}"
    return memory


def parse_placement(values: dict, surface: Literal["cli", "recipe"] = "cli") -> Placement:
    """A Placement from a surface's values (None: not given); a bad value is one line in that surface's words."""
    from pydantic import ValidationError

    try:
        return Placement.model_validate({name: value for name, value in values.items() if value is not None})
    except ValidationError as exc:
        raise first_error_line(exc, vocabulary(Placement, surface)) from None
