"""Train the embedded tiny Llama from scratch on generated domain text (CPU, deterministic).

Trains a byte-level BPE tokenizer (digits split into single tokens) and a
`LlamaForCausalLM` whose every Linear input dim is a multiple of 128 (head_dim 64,
vocab 1024), so FP8/INT8/W4A16 schemes and vLLM accept it. Same seed, same steps,
same thread count -> identical loss sequence. Exercised by:

    python -m pipelines.embedded.train --out pipelines/embedded/tiny-llama --steps 8000
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pipelines.embedded import EMBEDDED_MODEL_DIR
from pipelines.embedded.data import DEFAULT_SEED, build_world, training_records

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2
RECORDS_PER_REFILL = 4096


@dataclass
class TinyArchitecture:
    """The hyperparameters `build_model` builds the embedded Llama from (not a `pipelines.shape.ModelShape`,
    which is read from a checkpoint's config.json)."""

    # Small on purpose: on 2 shared cores tokens are the scarce resource, and a model below
    # saturation is what lets quantization damage show.
    hidden: int = 128
    layers: int = 4
    heads: int = 2
    intermediate: int = 512
    vocab: int = 1024
    context: int = 256


@dataclass
class TrainConfig:
    seed: int = DEFAULT_SEED
    steps: int = 8000
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 20
    activation_noise: float = 0.04  # relative std of the noise on every decoder Linear's input
    tokenizer_records: int = 20000
    threads: int = 2
    max_minutes: float | None = None  # safety stop; a run cut short by it is no longer reproducible
    # Named `shape` because training_summary.json records the config under that key.
    shape: TinyArchitecture = field(default_factory=TinyArchitecture)


@dataclass
class TrainResult:
    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerFast
    losses: list[float]
    seconds: float


def train_tokenizer(records: list[str], vocab: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    # Digits are isolated before byte-level BPE so every number is spelled digit by digit.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(records, trainer)
    tokenizer.decoder = decoders.ByteLevel()
    # BOS is added by the tokenizer itself, so lm-eval's hf backend prepends it like training did.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=TinyArchitecture.context)


def build_model(architecture: TinyArchitecture, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=architecture.vocab, hidden_size=architecture.hidden, intermediate_size=architecture.intermediate,
        num_hidden_layers=architecture.layers, num_attention_heads=architecture.heads,
        num_key_value_heads=architecture.heads, head_dim=architecture.hidden // architecture.heads,
        max_position_embeddings=architecture.context,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def token_batches(records: Iterator[list[str]], tokenizer, config: TrainConfig) -> Iterator[torch.Tensor]:
    """Pack `<s> record </s>` sequences back to back and cut them into fixed-length rows."""
    rows_needed, buffer = config.batch_size * config.seq_len, []
    for chunk in records:
        for ids in tokenizer(chunk)["input_ids"]:
            buffer.extend(ids + [tokenizer.eos_token_id])
        while len(buffer) >= rows_needed:
            batch, buffer = buffer[:rows_needed], buffer[rows_needed:]
            yield torch.tensor(batch).view(config.batch_size, config.seq_len)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def add_activation_noise(model: LlamaForCausalLM, sigma: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Multiply every decoder Linear's input by (1 + sigma * N(0, 1)) in training mode.

    Real LLMs shrug off 8-bit rounding; a 1.3 M-parameter model trained clean does not: FP8's
    per-token activation rounding (~2.6 % relative) blurs the q/k positional signal it copies
    digits with, and cost invoice totals 10 points. Noise a little above FP8's keeps the fixture
    as robust to 8-bit as the models it stands in for, while 3- and 2-bit damage still shows.
    """
    def perturb(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
        if module.training:
            return (inputs[0] * (1 + sigma * torch.randn_like(inputs[0])),)
        return None
    return [module.register_forward_pre_hook(perturb) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != "lm_head"]


def _seed_everything(config: TrainConfig) -> None:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    _seed_everything(config)
    world = build_world(config.seed)
    tokenizer = train_tokenizer(training_records(world, config.tokenizer_records), config.shape.vocab)
    model = build_model(config.shape, tokenizer)
    noise_hooks = add_activation_noise(model, config.activation_noise) if config.activation_noise else []
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.1)
    chunks = iter(lambda: training_records(world, RECORDS_PER_REFILL), None)
    batches = token_batches(chunks, tokenizer, config)
    losses, started = [], time.monotonic()
    bar = tqdm(range(config.steps), desc="train", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if config.max_minutes and time.monotonic() - started > 60 * config.max_minutes:
            break
    for hook in noise_hooks:
        hook.remove()
    return TrainResult(model, tokenizer, losses, time.monotonic() - started)


def save(result: TrainResult, config: TrainConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(out)
    result.tokenizer.save_pretrained(out)
    tok = result.tokenizer
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     do_sample=False).save_pretrained(out)
    tail = result.losses[-50:]
    summary = {"config": asdict(config), "seconds": round(result.seconds, 1),
               "final_loss_mean_last_50": round(sum(tail) / len(tail), 4),
               "parameters": sum(p.numel() for p in result.model.parameters()),
               "losses_every_10": [round(x, 4) for x in result.losses[::10]]}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EMBEDDED_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="step budget (fixes the LR schedule)")
    parser.add_argument("--activation-noise", type=float, default=TrainConfig.activation_noise,
                        help="relative std of training noise on Linear inputs (0 trains clean)")
    parser.add_argument("--max-minutes", type=float, help="stop early after this wall-clock time")
    args = parser.parse_args(argv)
    config = TrainConfig(seed=args.seed, steps=args.steps, activation_noise=args.activation_noise,
                         max_minutes=args.max_minutes)
    result = train(config)
    save(result, config, args.out)
    print(f"trained {len(result.losses)} steps in {result.seconds / 60:.1f} min, final loss {result.losses[-1]:.4f}")


if __name__ == "__main__":
    main()
