"""Reference-text log-probabilities: the raw material of distribution-level fidelity (KL, perplexity).

The reference text is tokenized once (no special tokens), cut into equal windows of
`eval.reference_window` tokens (BOS first when the tokenizer adds one, so every window is scored
the way lm-eval scores its prompts) up to `eval.reference_max_tokens` text tokens, and run through
the model in batches of `eval.batch_size` windows: one forward pass per batch, no generation.

File format (written and read only here), one safetensors file:
    token_ids  int64   [windows, window]         the scored tokens, BOS included where used
    logprobs   float32 [windows, window, vocab]  log-softmax of the logits at every position;
               float16 when vocab > 32k (a 128k-vocab model at 4096 tokens is 1 GiB in float16;
               the rounding, ~1e-3 relative, is far below the KL differences a gate cares about)

Exercised by: pytest tests/test_evaluate.py
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from safetensors import safe_open
from tqdm import tqdm

from pipelines.embedded import resolve_source
from pipelines.errors import InputError

log = logging.getLogger(__name__)

FLOAT16_VOCAB_THRESHOLD = 32768


def reference_text(setting: str | None) -> str | None:
    """`embedded` is the package's held-out domain text, anything else a text file; None disables."""
    path = reference_path(setting)
    return path.read_text() if path is not None else None


def reference_path(setting: str | None) -> Path | None:
    """The file eval.reference_text names, resolved (None: no reference pass)."""
    if setting is None:
        return None
    path = resolve_source(setting, "reference")
    if not path.is_file():
        raise InputError(f"eval.reference_text={setting}: {path} does not exist; give a text file or null")
    return path.resolve()


def cut_windows(token_ids: list[int], window: int, max_tokens: int, bos_token_id: int | None) -> list[list[int]]:
    """Equal windows of `window` tokens (BOS included), dropping the ragged tail."""
    text_ids = token_ids[:max_tokens]
    body = window - 1 if bos_token_id is not None else window
    count = len(text_ids) // body
    if count == 0:
        # A text shorter than one window is still scored, as a single shorter window.
        count, body = 1, len(text_ids)
    if body < 2:
        raise InputError(f"the reference text has {len(text_ids)} tokens; it needs at least 2 to be scored")
    prefix = [bos_token_id] if bos_token_id is not None else []
    return [prefix + text_ids[i * body:(i + 1) * body] for i in range(count)]


def reference_windows(tokenizer, text: str, max_positions: int | None, *, window: int, max_tokens: int,
                      add_bos_token: bool) -> list[list[int]]:
    """The windows the reference pass scores: the text's tokens cut as `cut_windows` does."""
    # A window longer than the model's positions would score garbage past the trained length.
    window = min(window, max_positions or window)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return cut_windows(ids, window, max_tokens, tokenizer.bos_token_id if add_bos_token else None)


def compute_reference_logprobs(model, tokenizer, text: str, *, window: int, max_tokens: int, batch_size: int,
                               add_bos_token: bool, out_path: Path) -> Path:
    """Score the reference text with `model` and save token ids and log-probabilities to `out_path`."""
    import torch

    config = model.config.get_text_config()
    windows = torch.tensor(reference_windows(tokenizer, text, getattr(config, "max_position_embeddings", None),
                                             window=window, max_tokens=max_tokens, add_bos_token=add_bos_token))
    vocab = config.vocab_size
    storage = torch.float16 if vocab > FLOAT16_VOCAB_THRESHOLD else torch.float32
    log.info("scoring reference text: %d windows x %d tokens, batch %d", *windows.shape, batch_size)
    device = next(model.parameters()).device
    chunks = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(windows), batch_size), desc="reference log-probs", unit="batch"):
            logits = model(input_ids=windows[start:start + batch_size].to(device)).logits
            chunks.append(torch.log_softmax(logits.float(), dim=-1).to(storage).cpu())
    save_reference_logprobs(windows, torch.cat(chunks), out_path)
    log.info("reference log-probs written to %s", out_path)
    return out_path


def save_reference_logprobs(token_ids, logprobs, out_path: Path) -> Path:
    """The file format above: token ids [windows, window], log-probs [windows, window, vocab]."""
    from safetensors.torch import save_file

    if tuple(logprobs.shape[:2]) != tuple(token_ids.shape):
        raise ValueError(f"log-probs {tuple(logprobs.shape)} do not match token ids {tuple(token_ids.shape)}")
    save_file({"token_ids": token_ids.contiguous(), "logprobs": logprobs.contiguous()}, str(out_path))
    return out_path


def write_window_subset(path: str | Path, windows: range, out_path: Path) -> Path:
    """A reference log-prob file holding only `windows` of the one at `path` (one side of a split)."""
    with safe_open(str(_existing(path)), framework="pt") as handle:
        token_ids = handle.get_slice("token_ids")[windows.start:windows.stop]
        logprobs = handle.get_slice("logprobs")[windows.start:windows.stop]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return save_reference_logprobs(token_ids, logprobs, out_path)


def read_token_ids(path: str | Path):
    with safe_open(str(_existing(path)), framework="pt") as handle:
        return handle.get_tensor("token_ids")


def iter_window_logprobs(path: str | Path) -> Iterator:
    """Float32 log-probabilities one window at a time, so a 128k vocabulary never sits whole in memory."""
    import torch

    with safe_open(str(_existing(path)), framework="pt") as handle:
        logprobs = handle.get_slice("logprobs")
        for index in range(logprobs.get_shape()[0]):
            yield logprobs[index:index + 1][0].to(torch.float32)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"reference log-probs {path} are missing; re-run the evaluation with overwrite=true")
    return path
