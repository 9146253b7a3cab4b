"""The command's report: index.html (pipelines/report_html.py), summary.json, a Pareto plot and summary tables.

`python -m pipelines.run -m quant=fp8,w8a8,awq,gptq` writes it at the end of a sweep (and the
tracker attaches it to the sweep's parent run); `python -m pytest tests/test_report.py` tests it.

Fidelity in the Pareto views is the worst task's lower interval bound of the accuracy delta (the task
that decides, not a mean that hides it); the frontier runs over PROMOTEd and INCONCLUSIVE variants
only: a REJECTed or failed one is drawn but never on it, the base is the reference. Cost is measured $/1M output tokens at the knee (marked "*" and footnoted when no load level met
the SLO: then it is at the best measured load); latency is p95 end-to-end at the smallest load
level (what one user sees). Variants without bench data stay in the table; each plot panel names
the variants it could not plot. The table's tok/s is marked "~" when the benchmark was noisy; "saving
vs base" is the paired saving in $/1M tokens with its interval (pipelines/ratios.py), and "decode
tok/s (roofline)" the measured decode rate at the cost level's batch beside the roofline's bound.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.pareto import frontier, is_base, slo_not_met, usd_per_million, worst_delta_bound
from pipelines.records import ChampionDecision, LoadLevel, Outcome
from pipelines.storage import atomic_write_text
from pipelines.track.keys import outcome_metrics, outcome_summary

log = logging.getLogger(__name__)

SLO_NOT_MET = "* no load level met the SLO: $/1M tok is at the best measured load (SLO not met)"
NOISY = ("~ noisy benchmark (repeats spread or background load; bench_conditions in summary.json): absolute "
         "tok/s and $ are unreliable, the paired saving vs base is not")


def e2e_p95_ms(outcome: Outcome) -> float | None:
    levels = outcome.bench.levels if outcome.bench else []
    return min(levels, key=lambda level: level.batch_size).e2e_ms.p95 if levels else None


def write_sweep_report(outcomes: list[Outcome], out_dir: str | Path, champions: list[ChampionDecision] = (),
                       configs: list[dict[str, Any]] = ()) -> list[Path]:
    """Write index.html, summary.json, pareto.png, summary.md and summary.txt under `out_dir`; return their paths."""
    from pipelines.report_html import write_html  # plotly: only when a report is written

    out = Path(out_dir)
    started = time.perf_counter()
    page = atomic_write_text(out / "index.html", write_html(outcomes, list(champions), list(configs)))
    log.info("report %s: %.1f MiB in %.1f s", page, page.stat().st_size / 2**20, time.perf_counter() - started)
    paths = [page, atomic_write_text(out / "summary.json", summary_json(outcomes, champions)),
             pareto_plot(outcomes, out / "pareto.png"),
             atomic_write_text(out / "summary.md", markdown_table(outcomes)),
             atomic_write_text(out / "summary.txt", text_table(outcomes))]
    log.info("sweep report written to %s", out)
    return paths


def summary_json(outcomes: list[Outcome], champions: list[ChampionDecision]) -> str:
    """The champion per model (policy, ranking, runner-up, previous holder) and every run's summary."""
    summary = {"champions": [dataclasses.asdict(c) for c in champions],
               "runs": [outcome_summary(o, outcome_metrics(o)) for o in outcomes]}
    return json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n"


def pareto_plot(outcomes: list[Outcome], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    cost_label = "$ per 1M output tokens (at the knee" + ("; * SLO not met)" if any(map(slo_not_met, outcomes))
                                                         else ")")
    _panel(axes[0], outcomes, usd_per_million, cost_label)
    _panel(axes[1], outcomes, e2e_p95_ms, "p95 end-to-end latency, ms (smallest load level)")
    axes[0].set_ylabel("worst task: accuracy delta, lower bound")
    figure.suptitle("Pareto frontier over PROMOTE/INCONCLUSIVE variants (stars); REJECT: x; base: diamond")
    figure.tight_layout(rect=(0, 0.04, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _panel(axis, outcomes: list[Outcome], x_of, label: str) -> None:
    """Variants named in the legend, not on the plot, so labels never collide."""
    points = [o for o in outcomes if x_of(o) is not None and worst_delta_bound(o) is not None]
    if not points:
        axis.text(0.5, 0.5, "no data", ha="center", transform=axis.transAxes)
    skipped = [o.variant_name for o in outcomes if o not in points]
    if skipped:  # per panel: a variant can have a latency but no cost (bench ran, no price) or the reverse
        axis.text(0, -0.2, f"not plotted here (no data): {', '.join(skipped)}", fontsize=8, transform=axis.transAxes)
    front = frontier(points, x_of)
    for outcome in points:
        on_front = any(o is outcome for o in front)
        marker = "D" if is_base(outcome) else "*" if on_front else "x" if _decision(outcome) == "REJECT" else "o"
        axis.scatter(x_of(outcome), worst_delta_bound(outcome), marker=marker, s=160 if on_front else 60, zorder=3,
                     label=_label(outcome) + ("*" if x_of is usd_per_million and slo_not_met(outcome) else ""))
    axis.plot([x_of(o) for o in front], [worst_delta_bound(o) for o in front], drawstyle="steps-post",
              color="tab:green", alpha=0.6)
    axis.set_xlabel(label)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)


def _decision(outcome: Outcome) -> str:
    return outcome.verdict.decision if outcome.verdict else ("FAILED" if outcome.error else "base")


def _label(outcome: Outcome) -> str:
    return f"{outcome.variant_name} ({'base, the reference' if is_base(outcome) else _decision(outcome)})"


def summary_rows(outcomes: list[Outcome]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per outcome; a missing value is '-'."""
    tasks = sorted({t.task for o in outcomes if o.fidelity for t in o.fidelity.tasks})
    header = ["variant", "verdict", *[f"{task} delta [CI]" for task in tasks], "flips r>w/w>r (all tasks)", "ref KL",
              "tok/s", "$/1M tok", "size MB", "saving vs base [CI]", "decode tok/s (roofline)"]
    rows = [_row(o, tasks) for o in outcomes]
    if any(o.variant_eval and o.variant_eval.sequential for o in outcomes):  # eval.sequential=true
        header.insert(2, "items used (sequential)")
        for row, outcome in zip(rows, outcomes):
            row.insert(2, _items_used(outcome))
    return header, rows


def _items_used(outcome: Outcome) -> str:
    records = outcome.variant_eval.sequential if outcome.variant_eval else []
    if not records:
        return "-"
    used, available = sum(r.items_used for r in records), sum(r.items_available for r in records)
    return f"{used}/{available} ({used / available:.0%})"


def _row(outcome: Outcome, tasks: list[str]) -> list[str]:
    by_task = {t.task: t for t in outcome.fidelity.tasks} if outcome.fidelity else {}
    deltas = [f"{t.delta:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}]" if (t := by_task.get(task)) else "-"
              for task in tasks]
    flips = (f"{sum(t.right_to_wrong for t in by_task.values())}/{sum(t.wrong_to_right for t in by_task.values())}"
             if by_task else "-")
    divergence = outcome.fidelity.divergence if outcome.fidelity else None
    level = _throughput_level(outcome)
    size = (outcome.variant.size_bytes if outcome.variant
            else outcome.bench.checkpoint_bytes if outcome.bench else None)
    return [outcome.variant_name, _decision(outcome), *deltas, flips,
            _fmt(divergence.kl_mean if divergence else None, ".4f"),
            _fmt(level.output_tokens_per_s if level else None, ".1f") + ("~" if noisy(outcome) else ""),
            _fmt(usd_per_million(outcome), ".3g") + ("*" if slo_not_met(outcome) else ""),
            _fmt(size / 2**20 if size is not None else None, ".1f"), _saving(outcome), _decode(outcome)]


def noisy(outcome: Outcome) -> bool:
    return bool(outcome.bench and outcome.bench.conditions and outcome.bench.conditions.warnings)


def _saving(outcome: Outcome) -> str:
    saving = outcome.cost.saving_vs_base if outcome.cost else None
    if saving is None:
        return "-"
    return f"{saving.estimate:+.1%} [{saving.low:+.1%}, {saving.high:+.1%}]"


def _decode(outcome: Outcome) -> str:
    cost = outcome.cost
    if cost is None or cost.decode_tokens_per_s is None:
        return "-"
    return f"{cost.decode_tokens_per_s:.0f} ({cost.decode_roofline_tokens_per_s:.0f})"


def _throughput_level(outcome: Outcome) -> LoadLevel | None:
    """The level cost is computed at (BenchResult.cost_level: the knee, else the most tokens/s)."""
    return outcome.bench.cost_level() if outcome.bench else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(outcomes: list[Outcome]) -> str:
    header, rows = summary_rows(outcomes)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + _footnotes(outcomes, "\n")) + "\n"


def _footnotes(outcomes: list[Outcome], lead: str = "") -> list[str]:
    notes = [SLO_NOT_MET] if any(map(slo_not_met, outcomes)) else []
    return [lead + note for note in notes + ([NOISY] if any(map(noisy, outcomes)) else [])]


def text_table(outcomes: list[Outcome]) -> str:
    header, rows = summary_rows(outcomes)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def render(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, rows), *_footnotes(outcomes)]) + "\n"
