"""The HTML report's charts (Plotly figures, rendered by pipelines/report_html.py).

Labels never collide: every variant is its own trace, named in the legend and on hover, not
written on the plot. Exercised by `python -m pytest tests/test_report_html.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
from plotly.colors import qualitative

from pipelines.pareto import frontier, is_base, slo_not_met, usd_per_million, worst_delta_bound
from pipelines.records import BenchResult, Outcome

if TYPE_CHECKING:  # the report reads the record's fields only; the search package is not a report dependency
    from pipelines.search.sensitivity import Sensitivity

COLORS = {"PROMOTE": "#17702c", "INCONCLUSIVE": "#c98a00", "REJECT": "#b3261e", "FAILED": "#777", "base": "#1f4e9c"}
# bench.slo keys and the LoadLevel percentiles they bound.
SLO_METRICS = {"ttft_p95_ms": ("ttft_ms", "TTFT"), "itl_p95_ms": ("itl_ms", "inter-token latency"),
               "e2e_p95_ms": ("e2e_ms", "end-to-end latency")}
# Below the worst non-REJECTed bound by more than this, a point is named in the title instead of squashing the chart.
PARETO_MARGIN = 0.02
LAYOUT = {"height": 360, "margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "template": "plotly_white"}


def decision(outcome: Outcome) -> str:
    if is_base(outcome):
        return "base"
    return outcome.verdict.decision if outcome.verdict else "FAILED"


def variant_colors(outcomes: list[Outcome]) -> dict[str, str]:
    """One colour per variant, the same in every chart."""
    palette = qualitative.D3
    return {o.variant_name: palette[i % len(palette)] for i, o in enumerate(outcomes)}


def forest_figures(outcomes: list[Outcome]) -> list[go.Figure]:
    """Per task: each variant's accuracy delta with its interval, and the tolerance as a line."""
    judged = [o for o in outcomes if o.fidelity and not is_base(o)]
    tasks = sorted({t.task for o in judged for t in o.fidelity.tasks})
    return [_forest(task, judged) for task in tasks]


def _forest(task: str, outcomes: list[Outcome]) -> go.Figure:
    figure = go.Figure()
    for outcome in outcomes:
        result = next((t for t in outcome.fidelity.tasks if t.task == task), None)
        if result is None:
            continue
        figure.add_trace(go.Scatter(
            x=[result.delta], y=[outcome.variant_name], mode="markers", name=outcome.variant_name,
            marker={"size": 10, "color": COLORS.get(decision(outcome), "#444")}, showlegend=False,
            error_x={"type": "data", "symmetric": False, "array": [result.ci_high - result.delta],
                     "arrayminus": [result.delta - result.ci_low]},
            hovertemplate=f"{outcome.variant_name}: %{{x:+.4f}} [{result.ci_low:+.4f}, {result.ci_high:+.4f}] "
                          f"({result.confidence:.0%} {result.ci_method})<extra></extra>"))
    tolerance = _tolerance(task, outcomes)
    if tolerance is not None:
        figure.add_vline(x=-tolerance, line={"color": "#b3261e", "dash": "dash"},
                         annotation_text=f"-tolerance {tolerance:.3g}")
    figure.add_vline(x=0, line={"color": "#999"})
    figure.update_layout(title=f"{task}: accuracy delta vs base", xaxis_title="delta (variant - base)",
                         **{**LAYOUT, "height": 120 + 40 * len(figure.data)})
    return figure


def _tolerance(task: str, outcomes: list[Outcome]) -> float | None:
    return next((r.threshold for o in outcomes if o.verdict for r in o.verdict.rules
                 if r.rule == "accuracy" and r.scope == task), None)


def latency_figures(outcomes: list[Outcome], slo: dict[str, Any]) -> list[go.Figure]:
    """p95 latency against load per variant, with the SLO line and the knee marked; one figure per SLO metric."""
    curves = [(f"{o.variant_name} ({o.bench.engine}, {decision(o)})", o.bench, color)
              for o, color in zip(outcomes, variant_colors(outcomes).values()) if o.bench and o.bench.levels]
    base_bench = next((o.base_bench for o in outcomes if o.base_bench and o.base_bench.levels), None)
    if base_bench and not any(is_base(o) and o.bench for o in outcomes):  # no quant=none run: the base's own bench
        curves.insert(0, (f"base ({base_bench.engine})", base_bench, COLORS["base"]))
    if not curves:
        return []
    keys = [key for key in SLO_METRICS if slo.get(key) is not None] or ["e2e_p95_ms"]
    return [_latency(curves, key, slo.get(key)) for key in keys]


def _latency(curves: list[tuple[str, BenchResult, str]], key: str, limit: float | None) -> go.Figure:
    field, label = SLO_METRICS[key]
    figure = go.Figure()
    for name, bench, color in curves:
        levels = sorted(bench.levels, key=lambda level: level.batch_size)
        figure.add_trace(go.Scatter(x=[lv.batch_size for lv in levels], y=[getattr(lv, field).p95 for lv in levels],
                                    mode="lines+markers", name=name, line={"color": color}))
        knee = bench.knee()
        if knee:
            figure.add_trace(go.Scatter(x=[knee.batch_size], y=[getattr(knee, field).p95], mode="markers",
                                        marker={"symbol": "star", "size": 14, "color": "black"}, showlegend=False,
                                        hovertemplate=f"knee of {name}: load %{{x}}<extra></extra>"))
    if limit is not None:
        figure.add_hline(y=limit, line={"color": "#b3261e", "dash": "dash"}, annotation_text=f"SLO {limit:g} ms")
    loads = sorted({lv.batch_size for _, bench, _ in curves for lv in bench.levels})
    figure.update_layout(title=f"p95 {label} vs load (star: knee)", xaxis_title="load (batch size / streams)",
                         yaxis_title="ms", **LAYOUT)
    figure.update_xaxes(type="log", tickvals=loads, ticktext=[str(load) for load in loads])
    return figure


def cost_figure(outcomes: list[Outcome]) -> go.Figure:
    priced = [o for o in outcomes if usd_per_million(o) is not None]
    figure = go.Figure(go.Bar(
        x=[o.variant_name + ("*" if slo_not_met(o) else "") for o in priced], y=[usd_per_million(o) for o in priced],
        marker={"color": [COLORS.get(decision(o)) for o in priced]},
        hovertemplate="%{x}: $%{y:.4g} per 1M output tokens<extra></extra>"))
    figure.update_layout(title="$ per 1M output tokens at the knee (measured point; * no load met the SLO)",
                         yaxis_title="$ / 1M output tokens", **LAYOUT)
    return figure


def saving_figure(outcomes: list[Outcome]) -> go.Figure | None:
    """Each variant's paired cost saving vs base with its interval; None when no variant has a bounded one."""
    paired = [(o, o.cost.saving_vs_base) for o in outcomes
              if not is_base(o) and o.cost and o.cost.saving_vs_base and o.cost.saving_vs_base.bounded]
    if not paired:
        return None
    figure = go.Figure(go.Scatter(
        x=[100 * s.estimate for _, s in paired], y=[o.variant_name for o, _ in paired], mode="markers",
        marker={"color": [COLORS.get(decision(o)) for o, _ in paired], "size": 10},
        error_x={"type": "data", "symmetric": False, "array": [100 * (s.high - s.estimate) for _, s in paired],
                 "arrayminus": [100 * (s.estimate - s.low) for _, s in paired]},
        hovertemplate="%{y}: %{x:.1f} % saving vs base<extra></extra>"))
    figure.add_vline(x=0, line_dash="dash", line_color="#666")
    level = f"{paired[0][1].confidence:.0%}"
    figure.update_layout(title=f"Cost saving vs base at the cost level, {level} interval over paired rounds",
                         xaxis_title="% saving in $ per 1M output tokens (right of 0: cheaper than the base)",
                         **LAYOUT)
    return figure


def pareto_figure(outcomes: list[Outcome]) -> go.Figure:
    """Cost against the worst task's delta bound; the frontier only over variants not REJECTed, the base a reference."""
    points = [o for o in outcomes if usd_per_million(o) is not None and worst_delta_bound(o) is not None]
    front = frontier(points, usd_per_million)
    figure, colors = go.Figure(), variant_colors(outcomes)
    if front:
        figure.add_trace(go.Scatter(x=[usd_per_million(o) for o in front], y=[worst_delta_bound(o) for o in front],
                                    mode="lines", line={"shape": "hv", "color": "#9bd3a6", "width": 3},
                                    name="frontier (PROMOTE / INCONCLUSIVE only)", hoverinfo="skip"))
    floor = min((worst_delta_bound(o) for o in points if decision(o) != "REJECT"), default=0.0) - PARETO_MARGIN
    for outcome in points:
        figure.add_trace(_pareto_point(outcome, any(o is outcome for o in front), colors[outcome.variant_name]))
    below = [f"{o.variant_name} ({worst_delta_bound(o):+.3f})" for o in points if worst_delta_bound(o) < floor]
    missing = [o.variant_name for o in outcomes if o not in points]
    notes = ([f"below the chart: {', '.join(below)}"] if below else []) + (
        [f"no data: {', '.join(missing)}"] if missing else [])
    figure.update_layout(title="Pareto: cost vs worst-task accuracy delta (lower bound)"
                         + (f"<br><sub>{'; '.join(notes)}</sub>" if notes else ""),
                         xaxis_title="$ per 1M output tokens (* no load met the SLO)",
                         yaxis_title="worst task: delta lower bound", **{**LAYOUT, "height": 460})
    if below:
        top = max(worst_delta_bound(o) for o in points)
        figure.update_yaxes(range=[floor, top + PARETO_MARGIN])
    return figure


def _pareto_point(outcome: Outcome, on_front: bool, color: str) -> go.Scatter:
    label = decision(outcome)
    symbol = "diamond" if label == "base" else "star" if on_front else "x" if label == "REJECT" else "circle"
    name = f"{outcome.variant_name}{'*' if slo_not_met(outcome) else ''} ({'reference' if label == 'base' else label})"
    return go.Scatter(x=[usd_per_million(outcome)], y=[worst_delta_bound(outcome)], mode="markers", name=name,
                      marker={"symbol": symbol, "size": 16 if symbol == "star" else 12, "color": color},
                      hovertemplate=f"{name}: $%{{x:.4g}}/1M tok, worst delta bound %{{y:+.4f}}<extra></extra>")


def sensitivity_figure(sensitivity: Sensitivity) -> go.Figure:
    """KL of each unit quantized alone, with its interval: decoder layers, then whole module kinds."""
    units = sensitivity.layers + sensitivity.kinds
    low = [u.kl_mean - u.kl_ci_low if u.kl_ci_low is not None else 0.0 for u in units]
    high = [u.kl_ci_high - u.kl_mean if u.kl_ci_high is not None else 0.0 for u in units]
    figure = go.Figure(go.Bar(
        x=[u.unit for u in units], y=[u.kl_mean for u in units],
        marker={"color": [COLORS["base"]] * len(sensitivity.layers) + [COLORS["FAILED"]] * len(sensitivity.kinds)},
        error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
        hovertemplate="%{x}: KL %{y:.3g} nats/token<extra></extra>"))
    figure.update_layout(title=f"Sensitivity to {sensitivity.label}: one unit quantized alone, "
                               f"{sensitivity.confidence:.0%} interval ({sensitivity.tokens} {sensitivity.text_source} "
                               "tokens)", xaxis_title="quantized alone (layers; grey: every module of a kind)",
                         yaxis_title="KL(base || unit quantized), nats/token", **LAYOUT)
    return figure
