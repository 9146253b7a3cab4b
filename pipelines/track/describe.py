"""What a reviewer reads in the MLflow UI without opening artifacts: the run description and the
sweep's summary table.

The description (tag `mlflow.note.content`, shown as markdown on the run page) is the verdict with
its reasons, every gate rule's numbers, and each stage's wall-clock time (and whether it was
reused from the cache). The sweep table is one row per variant run with the headline metrics of
pipelines/track/keys.py, logged on the parent run with `MlflowClient.log_table` (the UI renders it).
Exercised by `python -m pytest tests/test_track.py`.
"""

from __future__ import annotations

from typing import Any

from pipelines.champion import describe
from pipelines.records import ChampionDecision, Outcome
from pipelines.track.keys import headline_metrics, run_name, safe_name, time_metrics

NOTE_TAG = "mlflow.note.content"
# An experiment tag the UI reads as a saved runs-list view: open `#/experiments/<id>/runs?viewStateShareKey=quantgate`.
VIEW_KEY = "quantgate"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def run_description(outcome: Outcome, scheme: str | None, engine: str | None, reference: bool) -> str:
    """Markdown: the verdict (or the failure) first, then why, then where the time went."""
    what = f"`{run_name(outcome)}` ({scheme or 'unquantized'}, engine {engine or '?'})"
    if outcome.error:
        lines = [f"**FAILED** {what}", "", f"    {outcome.error[:2000]}"]
    elif outcome.verdict:
        role = " (the base against itself: the reference run)" if reference else ""
        lines = [f"**{outcome.verdict.decision}** {what}{role}, gate policy `{outcome.verdict.policy}`", ""]
        lines += [f"- {reason}" for reason in outcome.verdict.reasons]
        lines += ["", *_rules_table(outcome)]
    else:
        lines = [f"**no verdict** {what}"]
    return "\n".join(lines + ["", *_stage_lines(outcome)]).strip() + "\n"


def _rules_table(outcome: Outcome) -> list[str]:
    rows = ["| rule | scope | status | blocking | observed | bound | threshold |", "|---|---|---|---|---|---|---|"]
    for r in outcome.verdict.rules:
        rows.append(f"| {r.rule} | {r.scope} | {r.status} | {'yes' if r.blocking else 'no'} | {_num(r.observed)} "
                    f"| {_num(r.bound)} | {_num(r.threshold)} |")
    return rows if outcome.verdict.rules else []


def _stage_lines(outcome: Outcome) -> list[str]:
    if not outcome.stages:
        return []
    parts = [f"{s.stage} {s.ended - s.started:.1f} s{' (cached)' if s.from_cache else ''}" for s in outcome.stages]
    total = outcome.stages[-1].ended - outcome.stages[0].started
    return [f"Stages: {', '.join(parts)}; total {total:.1f} s."]


def runs_view(tasks: list[str]) -> dict[str, Any]:
    """The runs-list view: datasets, models, verdict-related tags and headline metrics as columns,
    best verdict first (sorting by a metric also lists sweep children flat instead of folded)."""
    metrics = [*(f"delta/{safe_name(t)}" for t in tasks), "cost/usd_per_1m_output_tokens", "throughput/knee_tokens_per_s",
               "time/total_seconds"]
    tags = ["quantgate.verdict", "quantgate.scheme", "quantgate.engine", "quantgate.reused"]
    columns = ["attributes.`Dataset`", "attributes.`Models`", *(f"metrics.`{m}`" for m in metrics),
               *(f"tags.`{t}`" for t in tags)]
    return {"orderByKey": "metrics.`gate/decision`", "orderByAsc": False, "selectedColumns": columns}


def sweep_table(outcomes: list[Outcome]) -> dict[str, list[Any]]:
    """Columns of the sweep's summary table: run, verdict, then every headline metric any run has."""
    rows = [{**headline_metrics(o), "time/total_seconds": time_metrics(o).get("time/total_seconds")}
            for o in outcomes]
    names = sorted({key for row in rows for key, value in row.items() if value is not None})
    table: dict[str, list[Any]] = {
        "run": [run_name(o) for o in outcomes],
        "verdict": [decision_label(o) for o in outcomes],
        "scheme": [(o.variant.scheme or "none") if o.variant else "-" for o in outcomes],
    }
    table.update({name: [_rounded(row.get(name)) for row in rows] for name in names})
    return table


def champion_lines(decisions: list[ChampionDecision]) -> list[str]:
    """Markdown: per model, the champion, the policy's ranking and the alias's previous holder."""
    lines: list[str] = []
    for d in decisions:
        head = f"**Champion of {d.model}: {d.champion}**" if d.champion else f"**No champion for {d.model}**"
        lines += [f"{head} (policy `{d.policy}`{', kept from an earlier run' if d.kept else ''})", "",
                  f"- ranking: {' > '.join(describe(c) for c in d.ranking) or 'no PROMOTEd variant'}",
                  f"- runner-up: {d.runner_up or 'none'}",
                  f"- previous alias holder: {describe(d.previous_holder) if d.previous_holder else 'none'}", ""]
    return lines


def decision_label(outcome: Outcome) -> str:
    return outcome.verdict.decision if outcome.verdict else ("FAILED" if outcome.error else "no verdict")


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value + 0.0:.4g}"  # + 0.0: -0.0 reads as 0
