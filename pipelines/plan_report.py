"""The plan as text: what `python -m pipelines.run ... plan=true` prints (see pipelines/plan.py).

    python -m pipelines.run model=llama3-8b quant=fp8 hardware=l4 plan=true
"""

from __future__ import annotations

from pipelines import exit_codes
from pipelines.config import ParallelServerConfig, RunConfig
from pipelines.cost import price_per_hour, scaled_hardware
from pipelines.plan import Plan, build_plan, duration
from pipelines.plan_eval import best_case_stop
from pipelines.serve import gpu_memory_fraction, runs_here
from pipelines.sizing import GB, SERVE_OVERHEAD_GB, kv_tokens, serve_gb_per_gpu


def render(plan: Plan) -> str:
    cfg, size, hw = plan.cfg, plan.size, plan.cfg.hardware
    gpus = plan.serve_gpus
    held = f"{gpus} x {hw.name}" if gpus else hw.name
    price = price_per_hour(scaled_hardware(cfg, gpus))
    lines = [f"plan: model={cfg.model.name} quant={cfg.quant.name} hardware={hw.name} serve={cfg.serve.name} "
             f"(estimates: roofline lower bounds, prices from conf/hardware/{hw.name}.yaml)",
             f"  model      {_count(size.params)} parameters, {size.layers} layers; shape from {plan.shape_source}",
             f"  weights    base {size.dtype} {_bytes(plan.base_bytes)} ({plan.base_bytes / size.params:.2f} B/param)"
             f" | {cfg.quant.name} {cfg.quant.scheme or size.dtype} ~{_bytes(plan.variant_bytes)} "
             f"({plan.variant_bytes / size.params:.2f} B/param)",
             f"  disk       download {_bytes(plan.download_bytes)} into the Hugging Face cache + variant "
             f"{_bytes(plan.variant_bytes if cfg.quant.method != 'none' else 0)} into {cfg.cache_dir}",
             f"  serving    {_serving_line(plan)}",
             f"  {'stage':<10} {'CPU RAM':>9} {'GPU mem/GPU':>12} {'GPUs':>5} {'time (est.)':>12} {'cost (est.)':>12}"]
    for stage in plan.stages:
        cost = stage.seconds / 3600 * price if stage.seconds is not None else None
        lines.append(f"  {stage.name:<10} {_gb(stage.cpu_ram_gb):>9} {_gb(stage.gpu_gb):>12} {stage.gpus or '-':>5} "
                     f"{duration(stage.seconds):>12} {('$%.2f' % cost) if cost is not None else '?':>12}  {stage.note}")
    known = [stage.seconds for stage in plan.stages if stage.seconds is not None]
    lines.append(f"  {'total':<10} {'':>9} {'':>12} {'':>5} {duration(sum(known)):>12} "
                 f"{'$%.2f' % (sum(known) / 3600 * price):>12}  of the stages with an estimate; {held} held "
                 f"for the whole run at ${price:.2f}/hour ({hw.price_tier})")
    for line in plan.serving_cost:
        lines.append(f"  serve cost (projected) {line}")
    if plan.sequential is not None and plan.evaluation is not None:
        lines.append(f"  sequential {_sequential_line(plan, price)}")
    counted = [f"{name} {n:,}{_split(cfg, name)}" for name, n in plan.suites if n is not None]
    unknown = [name for name, n in plan.suites if n is None]
    if counted:
        lines.append("  items      " + ", ".join(counted))
    if unknown:
        lines.append(f"  items      unknown offline (hub datasets): {', '.join(unknown)}")
    lines += [f"  warning    {warning}" for warning in plan.warnings]
    lines.append(f"  verdict    {'DOES NOT FIT: ' + plan.problems[0] if plan.problems else 'fits'}")
    return "\n".join(lines)


def print_plans(configs: list[RunConfig]) -> int:
    """plan=true: print each configuration's plan; exit code 2 when one does not fit, else 0."""
    plans = [build_plan(cfg, count_items=True) for cfg in configs]
    for plan in plans:
        print(render(plan))
    return exit_codes.INVALID_INPUT if any(plan.problems for plan in plans) else exit_codes.OK


def _split(cfg, task: str) -> str:
    size = cfg.eval.task_sizes.get(task)
    if size is None:
        return ""
    return f" ({size.split}" + (f", {size.subtasks} subtasks)" if size.subtasks > 1 else ")")


def _sequential_line(plan: Plan, price: float) -> str:
    """What eval.sequential=true would save, under its stated assumption."""
    full, seq = plan.evaluation, plan.sequential
    saving = 1 - seq.seconds / full.seconds if full.seconds else 0.0
    return (f"eval.sequential=true: ~{seq.items:,} of {full.items:,} items, evaluate ~{duration(seq.seconds)} "
            f"(${seq.seconds / 3600 * price:.2f}) instead of {duration(full.seconds)} (${full.seconds / 3600 * price:.2f}), "
            f"{saving:.0%} less, if the "
            f"variant changes no answer (then each task stops at the first look that decides it, "
            f"{_stop(plan)} items at tolerance {plan.cfg.gate.tolerance.max_drop:g}; flips need more, up to every item)")


def _stop(plan: Plan) -> str:
    stop = best_case_stop(plan.cfg.gate, plan.cfg.eval.chunk_size, multiple_choice=True)
    return f"{stop:,}" if stop is not None else "all"


def _serving_line(plan: Plan) -> str:
    cfg, hw = plan.cfg, plan.cfg.hardware
    if not runs_here(cfg):
        return f"served by servers quantgate does not start (serve={cfg.serve.name}): not sized here"
    if not plan.serve_gpus:
        return f"on {hw.name} ({hw.memory_gb:g} GB), no GPU"
    tokens = kv_tokens(cfg, plan.size)
    per_gpu = serve_gb_per_gpu(plan.size, max(plan.base_bytes, plan.variant_bytes), tokens, plan.serve_gpus)
    needs = (f"needs {plan.needed_tp} x {hw.name} at tensor-parallel {plan.needed_tp}" if plan.needed_tp
             else f"does not fit on 8 x {hw.name}")
    if plan.needed_tp and isinstance(cfg.serve, ParallelServerConfig) and plan.serve_gpus > plan.needed_tp:
        needs += f" (serve.tensor_parallel_size={plan.needed_tp} would do)"
    return (f"{needs}; configured {plan.serve_gpus} GPU(s): ~{per_gpu:.1f} GB per GPU of "
            f"{hw.memory_gb * gpu_memory_fraction(cfg):.0f} usable (weights + KV cache for {tokens:,} tokens "
            f"+ {SERVE_OVERHEAD_GB:g} GB overhead)")


def _count(params: float) -> str:
    return f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"


def _bytes(value: float) -> str:
    return f"{value / GB:.1f} GB" if value >= GB or not value else f"{value / 1e6:.1f} MB"


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} GB"
