"""What a recipe search leaves: a table of its candidates, the confirmation verdict, and the
candidates on the accuracy-cost plane with the chosen one marked.

    python -m pipelines.search quant=[fp8]   ->   <output dir>/search_summary.json, search_candidates.html
"""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from pipelines.records import save_record
from pipelines.report_charts import COLORS, LAYOUT, sensitivity_figure
from pipelines.search.procedure import SearchResult
from pipelines.storage import atomic_write_text


def text_table(result: SearchResult) -> str:
    """One line per candidate tried (name, kept, predicted cost, items spent, search outcome), then the verdict."""
    lines = [f"{'candidate':<24} {'kept':<28} {'pred $/1M':>10} {'items':>6}  search outcome"]
    for trial in result.trials:
        kept = ",".join(trial.kept) or "-"
        lines.append(f"{trial.candidate:<24} {kept[:28]:<28} {_money(trial.predicted_cost_per_mtok):>10} "
                     f"{trial.items:>6}  {trial.decision}")
    grid = f" (an exhaustive grid: {result.grid_items})" if result.grid_items is not None else ""
    lines.append(f"search: {result.search_items} search-split items over {len(result.trials)} candidates{grid}; "
                 f"stopped: {result.stop_reason}")
    if result.confirmation is not None:
        lines.append(f"confirmation of {result.chosen} on {result.confirmation.items} held-out items: "
                     f"{result.confirmation.decision}")
        lines += [f"  - {reason}" for reason in result.confirmation.reasons]
    else:
        lines.append(f"no candidate passed the search; best found: {result.best or 'none'} ({result.decision}, "
                     "on the search split: not certified)")
        best = next((t for t in result.trials if t.candidate == result.best), None)
        lines += [f"  - {reason}" for reason in (best.reasons if best else [])]
    return "\n".join(lines)


def _money(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "-"


def write_summary(result: SearchResult, output_dir: Path, sensitivities: list | None = None) -> list[Path]:
    """search_summary.json (every trial's numbers) and search_candidates.html: the candidates chart,
    then each scheme's sensitivity (pipelines/report_charts.sensitivity_figure); opens offline."""
    summary = save_record(result, output_dir / "search_summary.json")  # load_record(SearchResult, ...) reads it
    figures = [candidates_figure(result), *(sensitivity_figure(s) for s in sensitivities or [])]
    body = "".join(figure.to_html(full_html=False, include_plotlyjs=False) for figure in figures)
    page = f"<html><head><meta charset='utf-8'><script>{get_plotlyjs()}</script></head><body>{body}</body></html>"
    chart = atomic_write_text(output_dir / "search_candidates.html", page)
    return [summary, chart]


def candidates_figure(result: SearchResult) -> go.Figure:
    """Each search trial at (cost, worst task's delta lower bound); the chosen one a star. Cost is the
    measured $/1M output tokens where the bench ran, else the predicted checkpoint size."""
    measured = all(t.measured_cost_per_mtok is not None for t in result.trials)
    figure = go.Figure()
    for trial in result.trials:
        x = trial.measured_cost_per_mtok if measured else trial.predicted_bytes / 2**20
        chosen = trial.candidate == result.chosen
        figure.add_trace(go.Scatter(
            x=[x], y=[trial.worst_delta_low], mode="markers", name=f"{trial.candidate} ({trial.decision})"
            + (" chosen" if chosen else ""),
            marker={"symbol": "star" if chosen else "circle", "size": 18 if chosen else 11,
                    "color": COLORS.get(trial.decision, COLORS["FAILED"])}))
    verdict = f"chosen: {result.chosen}, confirmation {result.decision}" if result.chosen else \
        f"none passed the search (best: {result.best}, {result.decision})"
    figure.update_layout(title=f"Recipe search: candidates on the search split<br><sub>{verdict}</sub>",
                         xaxis_title="$ per 1M output tokens (measured)" if measured else "predicted size (MiB)",
                         yaxis_title="worst task: accuracy delta lower bound", **{**LAYOUT, "height": 460})
    return figure
