"""FP8 on real Hopper kernels: does the CPU-emulated FP8 verdict hold, and what do FP8 GEMMs buy?
BENCHMARKS.md, "FP8 on an H100".

The pipeline evaluates an FP8 variant (llm-compressor FP8_DYNAMIC) through compressed-tensors'
quantize-dequantize forward, which runs anywhere. A GPU serves the same checkpoint with FP8 tensor-core
GEMMs: e4m3 weights with per-channel scales, activations quantized per token at run time, bf16 out, as
vLLM does for this format. Three steps, the middle one on a Hopper GPU:

    python benchmarks/fp8_kernels.py emulate --out .cache/fp8_kernels/cpu.json      # here: quantize + CPU scores
    python benchmarks/fp8_kernels.py kernels --fp8 <variant dir> --out gpu.json      # H100: scores + GEMM timings
    python benchmarks/fp8_kernels.py report .cache/fp8_kernels/cpu.json gpu.json     # markdown tables

`emulate` makes the FP8 variant with the pipeline's own quantize stage (cached like any run) and scores
the fp32 base and the variant on the bundled suites with `pipelines.embedded.sensitivity` (lm-eval's
scoring rules, in-process). `kernels` needs only torch, transformers, safetensors and pyyaml: it scores the
base in fp32 and bf16 and the variant on `torch._scaled_mm`, then times one Llama-3-70B decoder
layer's GEMMs in bf16 and FP8 at several token counts. `report` pairs the per-item answers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from safetensors import safe_open

from pipelines.embedded import EMBEDDED_MODEL_DIR
from pipelines.embedded.sensitivity import flips, score

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
# Llama-3-70B (hidden 8192, intermediate 28672, 64 query / 8 KV heads of 128): (name, N, K) of the
# four GEMMs of one decoder layer, fused as vLLM runs them.
LLAMA3_70B_GEMMS = [("qkv_proj", 10240, 8192), ("o_proj", 8192, 8192), ("gate_up_proj", 57344, 8192),
                    ("down_proj", 8192, 28672)]
LLAMA3_70B_LAYERS = 80
TOKEN_COUNTS = [1, 16, 64, 256, 1024, 4096]


class Fp8Linear(torch.nn.Module):
    """A Linear served from an FP8_DYNAMIC checkpoint: per-token e4m3 activations, one FP8 GEMM, output in
    the activations' dtype."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor):
        super().__init__()
        self.weight_t = weight.t()  # (K, N) column-major: the layout cuBLASLt's FP8 GEMM takes
        self.scale_b = weight_scale.float().reshape(1, -1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        quantized, scale_a = quantize_per_token(rows)
        out = torch._scaled_mm(quantized, self.weight_t, scale_a=scale_a, scale_b=self.scale_b, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], -1)


def quantize_per_token(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric e4m3 per row, scale = absmax / 448 (compressed-tensors' and vLLM's rule)."""
    scale = rows.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (rows.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def load_fp8_model(base_dir: Path, fp8_dir: Path, device: str, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """The base with every Linear the checkpoint quantized replaced by its FP8 weights and scales.

    bf16 activations, as a server runs them (cuBLASLt's row-wise FP8 GEMM writes bf16 only); float32 on the
    CPU reproduces compressed-tensors' emulation, which the tests check."""
    from transformers import AutoModelForCausalLM

    if not (fp8_dir / "model.safetensors").is_file():
        raise SystemExit(f"no model.safetensors in {fp8_dir}: pass the variant directory `emulate` printed")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device).eval()
    with safe_open(fp8_dir / "model.safetensors", framework="pt", device=device) as tensors:
        names = [key.removesuffix(".weight_scale") for key in tensors.keys() if key.endswith(".weight_scale")]
        for name in names:
            weight = tensors.get_tensor(f"{name}.weight")
            if weight.dtype != FP8:
                raise SystemExit(f"{fp8_dir}: {name}.weight is {weight.dtype}, not {FP8}; "
                                 "pass a quant=fp8 (FP8_DYNAMIC) variant directory")
            parent, child = name.rsplit(".", 1)
            scale = tensors.get_tensor(f"{name}.weight_scale")
            model.get_submodule(parent).register_module(child, Fp8Linear(weight, scale))
    print(f"{len(names)} Linear layers on torch._scaled_mm from {fp8_dir}", flush=True)
    return model


def timed_scores(label: str, model, tokenizer) -> dict:
    start = time.perf_counter()
    correct = score(model, tokenizer)
    print(f"{label}: " + ", ".join(f"{task} {sum(v) / len(v):.3f}" for task, v in correct.items())
          + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    return correct


def emulate(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.models import offline_environment, resolve_base
    from pipelines.pipeline import compose_config
    from pipelines.quantize import run_quantize

    cfg = compose_config(["quant=fp8", *args.overrides])
    offline_environment(cfg.model)
    base = resolve_base(cfg.model)
    variant = run_quantize(cfg.quant, base, Path(cfg.cache_dir), cfg.seed)
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    models = {"base fp32 (CPU)": base.path, "fp8 emulated (CPU, compressed-tensors)": variant.checkpoint_dir}
    scores = {label: timed_scores(label, AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer)
              for label, path in models.items()}
    write(args.out, {"machine": machine(), "fp8_dir": variant.checkpoint_dir, "scores": scores})
    print(f"FP8 variant: {variant.checkpoint_dir}")


def kernels(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not torch.cuda.is_available():
        raise SystemExit("kernels needs a CUDA GPU with FP8 tensor cores (Hopper or newer); here run emulate and report")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 base means fp32, as on the CPU
    check_scaled_mm()
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    scores = {}
    for label, dtype in (("base fp32 (GPU)", torch.float32), ("base bf16 (GPU)", torch.bfloat16)):
        model = AutoModelForCausalLM.from_pretrained(args.base, dtype=dtype).to("cuda").eval()
        scores[label] = timed_scores(label, model, tokenizer)
    scores["fp8 kernels (GPU, torch._scaled_mm)"] = timed_scores(
        "fp8 kernels", load_fp8_model(args.base, args.fp8, "cuda"), tokenizer)
    write(args.out, {"machine": machine(), "scores": scores, "gemms": time_gemms()})


def check_scaled_mm() -> None:
    """The FP8 path against a float32 product of the same dequantized operands: a wrong layout is far off."""
    x, w = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16), torch.randn(512, 256, device="cuda")
    w_scale = w.abs().amax(dim=1, keepdim=True) / FP8_MAX
    w_fp8 = (w / w_scale).to(FP8)
    x_fp8, x_scale = quantize_per_token(x)
    fused = Fp8Linear(w_fp8, w_scale)(x).float()
    reference = (x_fp8.float() * x_scale) @ (w_fp8.float() * w_scale).t()
    error = ((fused - reference).norm() / reference.norm()).item()
    if error > 1e-2:
        raise SystemExit(f"torch._scaled_mm disagrees with the dequantized product (relative error {error:.3g})")
    print(f"torch._scaled_mm matches the dequantized product (relative error {error:.1e})", flush=True)


def time_gemms() -> list[dict]:
    rows = []
    for tokens in TOKEN_COUNTS:
        for name, n, k in LLAMA3_70B_GEMMS:
            x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
            w_scale = w.float().abs().amax(dim=1, keepdim=True) / FP8_MAX
            fp8 = Fp8Linear((w.float() / w_scale).to(FP8), w_scale)
            x_fp8, x_scale = quantize_per_token(x)
            calls = {"bf16_us": lambda: x @ w.t(),
                     "fp8_gemm_us": lambda: torch._scaled_mm(x_fp8, fp8.weight_t, scale_a=x_scale, scale_b=fp8.scale_b,
                                                             out_dtype=torch.bfloat16),
                     "fp8_with_quant_us": lambda: fp8(x)}
            timings = {key: cuda_time_us(call) for key, call in calls.items()}
            rows.append({"tokens": tokens, "gemm": name, "n": n, "k": k, **{key: t for key, (t, _) in timings.items()},
                         "timing": sorted({mode for _, mode in timings.values()})})
            print(rows[-1], flush=True)
    return rows


def cuda_time_us(fn, reps: int = 100) -> tuple[float, str]:
    """Median GPU time of one call, replayed from a CUDA graph as a server's decode loop runs it, so that
    Python's launch gaps between the small quantization kernels are not counted; eager if capture fails."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        run, mode = graph.replay, "cuda graph"
    except RuntimeError as error:
        print(f"CUDA graph capture failed ({error}); timing eagerly", flush=True)
        run, mode = fn, "eager"
    for _ in range(10):
        run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2], mode


def machine() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


def report(args: argparse.Namespace) -> None:
    runs = [json.loads(path.read_text()) for path in args.results]
    scores = {label: correct for run in runs for label, correct in run["scores"].items()}
    reference_label = next(iter(scores))
    reference = scores[reference_label]
    tasks = list(reference)
    lines = ["Machines: " + "; ".join(", ".join(f"{k} {v}" for k, v in run["machine"].items()) for run in runs), "",
             "| scored as | " + " | ".join(f"{task} acc (r→w / w→r vs {reference_label})" for task in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for label, correct in scores.items():
        cells = [f"{sum(correct[t]) / len(correct[t]):.3f} ({' / '.join(map(str, flips(reference[t], correct[t])))})"
                 for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Items answered differently, pair by pair:", ""] + pair_lines(scores, tasks)
    gemms = next((run["gemms"] for run in runs if "gemms" in run), None)
    if gemms:
        lines += ["", *gemm_lines(gemms)]
    print("\n".join(lines))


def pair_lines(scores: dict[str, dict[str, list[bool]]], tasks: list[str]) -> list[str]:
    emulated = next(label for label in scores if "emulated" in label)
    kernel = next(label for label in scores if "kernels" in label)
    pairs = [("base fp32 (CPU)", "base fp32 (GPU)"), ("base fp32 (GPU)", "base bf16 (GPU)"), (emulated, kernel)]
    lines = ["| pair | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for a, b in pairs:
        lines.append(f"| {a} vs {b} | " + " | ".join(
            f"{sum(x != y for x, y in zip(scores[a][t], scores[b][t]))} / {len(scores[a][t])}" for t in tasks) + " |")
    return lines


def gemm_lines(gemms: list[dict]) -> list[str]:
    """Per token count: one Llama-3-70B decoder layer's four GEMMs, summed, in bf16 and FP8."""
    lines = ["| tokens | bf16 µs/layer | FP8 GEMM µs/layer | FP8 + per-token quant µs/layer | "
             "speed-up (with quant) | "
             "bf16 weight GB/s | FP8 weight GB/s | bf16 TFLOP/s | FP8 TFLOP/s | 80 layers, FP8 + quant, ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    modes = sorted({mode for row in gemms for mode in row["timing"]})
    lines.insert(0, f"Median of 100 timed calls each, replayed as: {', '.join(modes)}.\n")
    for tokens in sorted({row["tokens"] for row in gemms}):
        layer = [row for row in gemms if row["tokens"] == tokens]
        bf16, fp8, fp8_q = (sum(row[key] for row in layer) for key in ("bf16_us", "fp8_gemm_us", "fp8_with_quant_us"))
        weights = sum(row["n"] * row["k"] for row in layer)
        flop = 2 * tokens * weights
        lines.append(f"| {tokens} | {bf16:.1f} | {fp8:.1f} | {fp8_q:.1f} | {bf16 / fp8:.2f}× ({bf16 / fp8_q:.2f}×) | "
                     f"{2 * weights / bf16 / 1e3:.0f} | {weights / fp8 / 1e3:.0f} | {flop / bf16 / 1e6:.0f} | "
                     f"{flop / fp8 / 1e6:.0f} | {fp8_q * LLAMA3_70B_LAYERS / 1e3:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    step = steps.add_parser("emulate", help="quantize FP8 with the pipeline and score base + variant on the CPU")
    step.add_argument("--out", type=Path, required=True)
    step.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.source=/path/to/model")
    step = steps.add_parser("kernels", help="on a Hopper GPU: score with FP8 kernels and time GEMMs")
    step.add_argument("--base", type=Path, default=EMBEDDED_MODEL_DIR)
    step.add_argument("--fp8", type=Path, required=True, help="the FP8_DYNAMIC variant directory `emulate` printed")
    step.add_argument("--out", type=Path, required=True)
    step = steps.add_parser("report", help="markdown tables from the two result files")
    step.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args()
    {"emulate": emulate, "kernels": kernels, "report": report}[args.step](args)


if __name__ == "__main__":
    main()
