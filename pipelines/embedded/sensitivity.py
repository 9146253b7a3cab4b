"""Quick quantization-sensitivity probe of a model on the bundled suites (in-process, CPU).

Fake-quantizes every decoder Linear with symmetric round-to-nearest per group of 128
input weights at several bit widths, and scores each copy on the qg_domain items with
the same scoring rules as the lm-eval tasks (multiple choice by summed log-likelihood
of " choice"; invoice totals by greedy generation up to the period, the total read by
the task's own regex filter). It is a design aid for the embedded model, not the
pipeline's evaluator. Exercised by:

    python -m pipelines.embedded.sensitivity --model pipelines/embedded/tiny-llama --bits 8 4 3 2
"""
from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.embedded import EMBEDDED_MODEL_DIR
from pipelines.embedded.data import SUITE_DATA_DIR

GROUP_SIZE = 128
BATCH = 64
INVOICE_TASK_YAML = SUITE_DATA_DIR.parent / "invoice_total" / "qg_invoice_total.yaml"


def fake_quantize(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """A copy of `model` whose decoder Linear weights went through int-`bits` RTN and back."""
    quantized = copy.deepcopy(model)
    qmax = 2 ** (bits - 1) - 1
    for name, module in quantized.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            weight = module.weight.data
            groups = weight.view(weight.shape[0], -1, GROUP_SIZE)
            scale = groups.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / qmax
            groups = torch.clamp(torch.round(groups / scale), -qmax - 1, qmax) * scale
            module.weight.data = groups.view_as(weight)
    return quantized


def load_items(task: str, limit: int | None = None) -> list[dict]:
    return [json.loads(line) for line in (SUITE_DATA_DIR / f"{task}.jsonl").read_text().splitlines()[:limit]]


@torch.no_grad()
def continuation_logprobs(model, tokenizer, context: str, continuations: list[str]) -> list[float]:
    """Summed log-probability of each continuation after `context`, split like lm-eval does."""
    context_len = len(tokenizer(context)["input_ids"])
    wholes = [tokenizer(context + c)["input_ids"] for c in continuations]
    width = max(map(len, wholes))
    padded = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in wholes], device=model.device)
    logprobs = model(padded).logits[:, :-1].float().log_softmax(-1)
    return [logprobs[row, context_len - 1:len(ids) - 1].gather(-1, padded[row, context_len:len(ids), None]).sum().item()
            for row, ids in enumerate(wholes)]


def choice_correct(model, tokenizer, items: list[dict]) -> list[bool]:
    def pick(item: dict) -> int:
        scores = continuation_logprobs(model, tokenizer, item["query"], [" " + c for c in item["choices"]])
        return max(range(len(scores)), key=scores.__getitem__)
    return [pick(item) == item["label"] for item in items]


def _generation_rules(task_yaml: Path) -> tuple[int, re.Pattern]:
    """The task's own token budget and answer regex, so this probe scores exactly as lm-eval does."""
    task = yaml.safe_load(task_yaml.read_text())
    regex = next(step["regex_pattern"] for step in task["filter_list"][0]["filter"] if step["function"] == "regex")
    return task["generation_kwargs"]["max_gen_toks"], re.compile(regex)


@torch.no_grad()
def generation_correct(model, tokenizer, items: list[dict], task_yaml: Path = INVOICE_TASK_YAML) -> list[bool]:
    max_new_tokens, answer_regex = _generation_rules(task_yaml)
    tokenizer.padding_side = "left"
    correct = []
    for start in range(0, len(items), BATCH):
        batch = items[start:start + BATCH]
        encoded = tokenizer([item["query"] for item in batch], return_tensors="pt", padding=True).to(model.device)
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False)
        texts = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        answers = [answer_regex.findall(text.split(".")[0].split("\n")[0]) for text in texts]
        correct += [bool(found) and found[0] == item["answer"] for found, item in zip(answers, batch)]
    return correct


def score(model, tokenizer, limit: int | None = None) -> dict[str, list[bool]]:
    return {
        "qg_vendor_facts": choice_correct(model, tokenizer, load_items("qg_vendor_facts", limit)),
        "qg_policy_route": choice_correct(model, tokenizer, load_items("qg_policy_route", limit)),
        "qg_invoice_total": generation_correct(model, tokenizer, load_items("qg_invoice_total", limit)),
    }


def flips(base: list[bool], variant: list[bool]) -> tuple[int, int]:
    """(right->wrong, wrong->right) counts: the discordant pairs a McNemar test uses."""
    return (sum(b and not v for b, v in zip(base, variant)), sum(v and not b for b, v in zip(base, variant)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 3, 2])
    parser.add_argument("--limit", type=int, help="score only the first N items of each task")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    base = score(model, tokenizer, args.limit)
    print("| variant | " + " | ".join(base) + " |")
    print("| base fp32 | " + " | ".join(f"{sum(v) / len(v):.3f}" for v in base.values()) + " |", flush=True)
    for bits in args.bits:
        variant = score(fake_quantize(model, bits), tokenizer, args.limit)
        cells = [f"{sum(variant[t]) / len(variant[t]):.3f} (-{flips(base[t], variant[t])[0]}/+{flips(base[t], variant[t])[1]})"
                 for t in base]
        print(f"| RTN int{bits} g{GROUP_SIZE} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
