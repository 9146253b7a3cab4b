"""FP8 against BF16 on a Hopper GPU, timed as pairs: a Llama-3-8B-shaped model, in-process.
BENCHMARKS.md, "Paired FP8 / BF16 decode on an H200".

Speed does not depend on weight values, so the model is built from Llama 3 8B's config.json shape
(conf/model/llama3-8b.yaml) with random weights on the GPU: nothing is downloaded. llm-compressor
quantizes it to FP8_DYNAMIC (the pipeline's quant=fp8 recipe) and writes the compressed-tensors
checkpoint, which transformers loads back as the pipeline's in-process path does. A third arm puts the
same FP8 weights on torch._scaled_mm (benchmarks/fp8_kernels.py), the FP8 GEMM a server runs.

Arms are timed in rounds, interleaved (ABC, CBA, ABC, ...), so a slow moment of the machine hits every
arm alike; each round gives one decode tokens/s per arm and batch size, and the ratio's interval comes
from the rounds (`report`).

    # on the GPU machine (torch, transformers, llm-compressor, pyyaml):
    PYTHONPATH=. python benchmarks/gpu_paired_fp8.py measure --out $OUT/gpu_paired_fp8.json
    # here: intervals, roofline fractions, the BENCHMARKS.md table
    python benchmarks/gpu_paired_fp8.py report benchmarks/results/gpu_paired_fp8.json

`measure --tiny` runs the same code on a tiny shape (on the CPU where there is no GPU) as a dry run.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHAPE_CONFIG = REPO / "conf" / "model" / "llama3-8b.yaml"
TINY_SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 1024, "max_position_embeddings": 512,
              "tie_word_embeddings": False}
PROMPT_TOKENS = 64
# H200 SXM datasheet HBM3e bandwidth; the run also measures a device-to-device copy.
DATASHEET_BANDWIDTH = 4.8e12


def build_base(shape: dict, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = {k: v for k, v in shape.items() if k != "torch_dtype"}
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**fields, dtype=dtype)).to(dtype).eval()
    return model


def quantize_fp8(base: torch.nn.Module, out: Path) -> Path:
    """The pipeline's quant=fp8 recipe (conf/quant/fp8.yaml) through llm-compressor, saved compressed."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    model = copy.deepcopy(base)
    # oneshot reads the config back from name_or_path to refuse already-quantized checkpoints.
    model.config.save_pretrained(out.parent / "base-config")
    model.config.name_or_path = str(out.parent / "base-config")
    oneshot(model=model, recipe=[QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])])
    model.save_pretrained(out, save_compressed=True)
    del model
    return out


def scaled_mm_arm(base: torch.nn.Module, fp8_dir: Path) -> torch.nn.Module:
    """The base with each quantized Linear replaced by the checkpoint's FP8 weights on torch._scaled_mm."""
    from safetensors import safe_open

    from fp8_kernels import Fp8Linear  # benchmarks/ sibling: the FP8 GEMM module checked on an H100

    model = copy.deepcopy(base)
    for path in sorted(fp8_dir.glob("*.safetensors")):
        with safe_open(path, framework="pt", device="cuda") as tensors:
            for key in [k for k in tensors.keys() if k.endswith(".weight_scale")]:
                name = key.removesuffix(".weight_scale")
                parent, child = name.rsplit(".", 1)
                layer = Fp8Linear(tensors.get_tensor(f"{name}.weight"), tensors.get_tensor(key))
                model.get_submodule(parent).register_module(child, layer)
    return model


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes a decode step reads from weights: every parameter and buffer once, except the embedding
    table, of which one row per token is read."""
    embedding = model.get_input_embeddings().weight
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    tensors.update({id(t): t for m in model.modules() for t in vars(m).values() if isinstance(t, torch.Tensor)})
    total = sum(t.numel() * t.element_size() for t in tensors.values() if t.device.type != "meta")
    return total - embedding.numel() * embedding.element_size()


def copy_bandwidth(device: str) -> float | None:
    """Device-to-device copy, bytes read plus written per second (the ceiling decode can reach)."""
    if device != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        dst.copy_(src)
    end.record()
    end.synchronize()
    return 2 * 20 * src.numel() / (start.elapsed_time(end) / 1e3)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def generate_seconds(model, prompt: torch.Tensor, new_tokens: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    sync(device)
    return time.perf_counter() - start


def decode_tokens_per_s(model, prompt: torch.Tensor, new_tokens: int, device: str) -> dict:
    """Decode rate with the prefill taken out: (new_tokens - 1) steps after the first token."""
    first = generate_seconds(model, prompt, 1, device)
    full = generate_seconds(model, prompt, new_tokens, device)
    batch = prompt.shape[0]
    return {"prefill_s": first, "total_s": full, "decode_tokens_per_s": batch * (new_tokens - 1) / (full - first)}


def measure(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape = TINY_SHAPE if args.tiny else yaml.safe_load(SHAPE_CONFIG.read_text())["model"]["shape"]
    result = {"machine": machine(device), "shape": shape, "dtype": str(dtype), "prompt_tokens": PROMPT_TOKENS,
              "new_tokens": args.new_tokens, "rounds": [], "copy_bandwidth_bytes_per_s": copy_bandwidth(device)}
    save(args.out, result, "bandwidth measured")
    base = build_base(shape, device, dtype)
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        started = time.perf_counter()
        fp8_dir = quantize_fp8(base, Path(scratch) / "fp8")
        result["quantize_and_save_s"] = time.perf_counter() - started
        arms = load_arms(base, fp8_dir, device)
        result["weight_bytes_per_token"] = {name: weight_bytes_per_token(model) for name, model in arms.items()}
        result["checkpoint_bytes_fp8"] = sum(p.stat().st_size for p in fp8_dir.glob("*.safetensors"))
        save(args.out, result, f"arms ready: {', '.join(arms)}")
        time_rounds(arms, args, device, result)


def load_arms(base, fp8_dir: Path, device: str) -> dict:
    from transformers import AutoModelForCausalLM

    arms = {"bf16": base,
            "fp8 (compressed-tensors, in-process)": AutoModelForCausalLM.from_pretrained(
                fp8_dir, device_map=device).eval()}
    if device == "cuda":
        arms["fp8 (torch._scaled_mm)"] = scaled_mm_arm(base, fp8_dir)
    return arms


def time_rounds(arms: dict, args: argparse.Namespace, device: str, result: dict) -> None:
    names = list(arms)
    generator = torch.Generator().manual_seed(0)
    vocab = result["shape"]["vocab_size"]
    for batch in args.batch_sizes:
        prompt = torch.randint(1, vocab, (batch, PROMPT_TOKENS), generator=generator).to(device)
        for name in names:  # warm-up: allocator, cuBLAS heuristics, caches at full length
            generate_seconds(arms[name], prompt, args.new_tokens, device)
        for index in range(args.rounds):
            order = names if index % 2 == 0 else names[::-1]
            row = {"batch_size": batch, "round": index, "order": order,
                   "arms": {name: decode_tokens_per_s(arms[name], prompt, args.new_tokens, device) for name in order}}
            result["rounds"].append(row)
            save(args.out, result, f"batch {batch} round {index}: " + ", ".join(
                f"{n} {row['arms'][n]['decode_tokens_per_s']:.1f} tok/s" for n in names))


def machine(device: str) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    for module in ("transformers", "llmcompressor", "compressed_tensors"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            continue
    return info


def save(path: Path, result: dict, message: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(message, flush=True)


def report(args: argparse.Namespace) -> None:
    """Markdown tables: decode tokens/s per arm against the roofline, and each FP8 arm over BF16 with
    the paired interval the gate uses (pipelines/ratios.py), Fieller's beside it."""
    from pipelines.ratios import fieller_ratio_interval, paired_ratio_interval

    result = json.loads(args.result.read_text())
    bandwidth = result["copy_bandwidth_bytes_per_s"]
    arms = list(result["rounds"][0]["arms"])
    print(f"{result['machine']['gpu']}, {result['machine']['date']}, torch {result['machine']['torch']}, "
          f"device-to-device copy {bandwidth / 1e12:.2f} TB/s (datasheet {DATASHEET_BANDWIDTH / 1e12:.1f})\n")
    print("| batch | arm | decode tok/s, median of rounds (min-max) | weights read per step | roofline tok/s "
          "(measured copy BW) | fraction of roofline |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch in sorted({row["batch_size"] for row in result["rounds"]}):
        rates = per_arm_rates(result, batch)
        for arm in arms:
            roofline = batch * bandwidth / result["weight_bytes_per_token"][arm]
            median = float(np.median(rates[arm]))
            print(f"| {batch} | {arm} | {median:.1f} ({min(rates[arm]):.1f}-{max(rates[arm]):.1f}) | "
                  f"{result['weight_bytes_per_token'][arm] / 1e9:.2f} GB | {roofline:.0f} | {median / roofline:.1%} |")
    level = f"{args.confidence:.0%}"
    print(f"\n| batch | arm over bf16 | rounds | decode tok/s ratio, paired log-ratio t interval ({level}) | "
          f"Fieller ({level}) |")
    print("| --- | --- | --- | --- | --- |")
    for batch in sorted({row["batch_size"] for row in result["rounds"]}):
        rates = per_arm_rates(result, batch)
        for arm in arms[1:]:
            paired = paired_ratio_interval(rates[arm], rates["bf16"], args.confidence)
            fieller = fieller_ratio_interval(rates[arm], rates["bf16"], args.confidence)
            print(f"| {batch} | {arm} | {paired.rounds} | {paired.estimate:.3f} [{paired.low:.3f}, {paired.high:.3f}] | "
                  f"{fieller.estimate:.3f} [{fieller.low:.3f}, {fieller.high:.3f}] |")


def per_arm_rates(result: dict, batch: int) -> dict[str, list[float]]:
    rows = [row for row in result["rounds"] if row["batch_size"] == batch]
    return {arm: [row["arms"][arm]["decode_tokens_per_s"] for row in rows] for arm in rows[0]["arms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure", help="build, quantize and time the arms (GPU machine)")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--tiny", action="store_true", help="a tiny shape: a dry run of the same code")
    run.add_argument("--rounds", type=int, default=6)
    run.add_argument("--new-tokens", type=int, default=64)
    run.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    run.add_argument("--scratch", type=Path, default=None, help="where the FP8 checkpoint is written")
    tables = commands.add_parser("report", help="intervals and roofline fractions of a measure result (here)")
    tables.add_argument("result", type=Path)
    tables.add_argument("--confidence", type=float, default=0.95)
    args = parser.parse_args()
    (measure if args.command == "measure" else report)(args)


if __name__ == "__main__":
    main()
