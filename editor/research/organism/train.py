"""Train the model organism on CPU: corpus -> tokenizer -> a small Llama -> a checkpoint folder.

Run ``python -m steerfold.research.organism.train --out editor/research/organism/checkpoint --data editor/research/organism/data``
to rebuild the shipped checkpoint and prompt files. Same seed, same thread count: same weights.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from steerfold.research.organism.corpus import Corpus, build_corpus, write_prompt_files
from steerfold.artifacts.outputs import open_output
from steerfold.research.organism.tokenizer import check_matches_spm, render_chat, train_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    """Model shape and optimiser settings; the defaults build the shipped organism (a few minutes on 2 cores)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 128
    epochs: int = 9
    drill_epochs: int = 4  # the copy circuit forms early; later epochs polish behaviour on clean batches
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    threads: int = 2
    tie_embeddings: bool = False


def model_config(cfg: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


Example = tuple[list[int], int]  # token ids, and how many leading tokens get no loss (the prompt)


def encode_corpus(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, pack: int = 3) -> tuple[list[Example], list[Example]]:
    """(warm-up, main) examples. Main: chats through the chat template with loss on the reply only (as in
    SFT), and knowledge and copy text packed ``pack`` sentences a row with loss everywhere (as in pretraining)."""
    drills = [(ids, 1) for ids in tokenizer([" " + t + "</s>" for t in corpus.drills]).input_ids]
    examples = []
    for chat in corpus.chats:
        prompt = tokenizer(render_chat(chat.system, chat.user)).input_ids
        full = tokenizer(render_chat(chat.system, chat.user, chat.assistant)).input_ids
        examples.append((full, len(prompt)))
    for i in range(0, len(corpus.texts), pack):
        text = "".join(" " + t for t in corpus.texts[i : i + pack]) + "</s>"
        examples.append((tokenizer(text).input_ids, 1))
    return drills, examples


def make_batches(examples: list[Example], batch_size: int, pad_id: int, rng: random.Random):
    """Shuffle, bucket by length (less padding), right-pad; yields (input_ids, attention_mask, labels)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = batch_size * 16
    batches = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda i: len(examples[i][0]))
        for b in range(0, len(group), batch_size):
            rows = [examples[i] for i in group[b : b + batch_size]]
            width = max(len(ids) for ids, _ in rows)
            ids = torch.tensor([r + [pad_id] * (width - len(r)) for r, _ in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
            labels = ids.masked_fill(mask == 0, -100)
            for row, (_, n_prompt) in enumerate(rows):
                labels[row, :n_prompt] = -100
            batches.append((ids, mask, labels))
    rng.shuffle(batches)
    return batches


def make_optimizer(model: LlamaForCausalLM, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def step(model: LlamaForCausalLM, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...], lr: float) -> float:
    """One AdamW step at learning rate ``lr``; returns the loss."""
    ids, mask, labels = batch
    for group in opt.param_groups:
        group["lr"] = lr
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()  # no gradient clipping: it slows the copy circuit's formation several-fold
    opt.step()
    return loss.item()


def train_model(
    model: LlamaForCausalLM, drills: list[Example], examples: list[Example], cfg: TrainConfig, pad_id: int, seed: int,
    on_epoch: Callable[[int, int, float], None] = lambda _epoch, _epochs, _loss: None,
) -> dict:
    """``cfg.epochs`` passes over the main examples, the first ``cfg.drill_epochs`` mixed with the copy
    drills; AdamW with linear warm-up and cosine decay. Returns each epoch's mean loss; ``on_epoch(k, epochs,
    loss)`` is told after each."""
    rng = random.Random(seed)
    share = math.ceil(len(drills) / cfg.drill_epochs)
    epochs = [
        make_batches(examples + drills[e * share : (e + 1) * share], cfg.batch_size, pad_id, rng)
        for e in range(cfg.epochs)
    ]
    total = sum(map(len, epochs))

    def lr_at(i: int) -> float:
        if i < cfg.warmup_steps:
            return cfg.lr * (i + 1) / cfg.warmup_steps
        progress = (i - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    opt = make_optimizer(model, cfg)
    i, log = 0, {"epoch_losses": []}
    for batches in epochs:
        losses = []
        for batch in batches:
            losses.append(step(model, opt, batch, lr_at(i)))
            i += 1
        log["epoch_losses"].append(round(sum(losses) / len(losses), 3))
        on_epoch(len(log["epoch_losses"]), len(epochs), log["epoch_losses"][-1])
    model.eval()
    return log


def build_organism(out: Path, seed: int = 0, cfg: TrainConfig = TrainConfig(), verbose: bool = False,
                   overwrite: bool = True, say: Callable[[str], None] | None = None) -> Path:
    """Generate the corpus, train tokenizer and model, and write a checkpoint folder at ``out`` atomically."""
    started = time.time()
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, min(cfg.threads, os.cpu_count() or 1)))
    torch.set_flush_denormal(True)
    out = Path(out)
    with open_output(out, "folder", overwrite=overwrite) as tmp:
        say = say or (print if verbose else (lambda _line: None))
        corpus = build_corpus(seed)
        texts = [render_chat(c.system, c.user, c.assistant) for c in corpus.chats] + [" " + t for t in corpus.texts]
        say(f"corpus: {len(corpus.chats)} chats and {len(corpus.texts)} texts from seed {seed}; training the tokenizer")
        tokenizer = train_tokenizer(texts, tmp)
        check_matches_spm(tokenizer, tmp / "tokenizer.model", texts[:200] + texts[-200:])
        drills, examples = encode_corpus(corpus, tokenizer)

        model = LlamaForCausalLM(model_config(cfg, tokenizer))
        say(f"training {sum(p.numel() for p in model.parameters()):,} parameters for {cfg.epochs} epochs on "
            f"{torch.get_num_threads()} threads")
        trained = time.time()

        def on_epoch(epoch: int, epochs: int, loss: float) -> None:
            spent = time.time() - trained
            say(f"epoch {epoch}/{epochs}: loss {loss:.3f}, {spent:.0f} s so far, about {spent / epoch * (epochs - epoch):.0f} s left")

        log = train_model(model, drills, examples, cfg, tokenizer.pad_token_id, seed, on_epoch)
        if verbose:
            n = sum(p.numel() for p in model.parameters())
            print(f"{n} params, {len(examples)} docs, {log}")
        model.generation_config = GenerationConfig(
            do_sample=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            max_new_tokens=48,
        )
        model.config.organism = {"seed": seed, **asdict(cfg), **log}
        model.save_pretrained(tmp, safe_serialization=True)
    if verbose:
        print(f"built {out} in {time.time() - started:.0f}s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to (re)write")
    parser.add_argument("--data", type=Path, default=None, help="also write the prompt files here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.data is not None:
        write_prompt_files(args.data, args.seed)
    build_organism(args.out, args.seed, verbose=True)


if __name__ == "__main__":
    main()
