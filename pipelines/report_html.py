"""report/index.html: the one page a reviewer reads before a release. It opens from disk with no network
(plotly.js, CSS and the flips data are inlined).

`python -m pipelines.run -m quant=none,fp8,w8a8,gptq,awq,canary-w2` writes it at the end of the command
(pipelines/sweep.py, also for a single run) and prints its path; tests/test_report_html.py opens it in
headless Chromium. Top to bottom: the decision (champion, verdict per variant, blocking rules with
their intervals against their limits, what would settle each INCONCLUSIVE), per-task forest plots of
the accuracy delta, the flips browser (pipelines/flips.py), latency against load with the SLO and the
knee, cost, a Pareto view, and versions, config and suite hashes.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

import plotly.graph_objects as go
import yaml
from plotly.offline import get_plotlyjs

from pipelines.champion import describe
from pipelines.errors import InputError
from pipelines.flips import SAME_SCORE, outcome_flips
from pipelines.records import ChampionDecision, Outcome, RuleResult
from pipelines.report_charts import cost_figure, forest_figures, latency_figures, pareto_figure, saving_figure

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0;width:100%}td,th{border:1px solid #ddd;padding:3px 6px;
vertical-align:top;text-align:left}th{background:#f3f3f3}.PROMOTE{color:#17702c;font-weight:bold}
.REJECT,.FAILED,.FAIL{color:#b3261e;font-weight:bold}.INCONCLUSIVE,.SKIPPED{color:#9a6700;font-weight:bold}
.champion{background:#eaf6ec;border:1px solid #9bd3a6;padding:10px 14px;border-radius:6px}
pre{white-space:pre-wrap;max-height:320px;overflow:auto;background:#f7f7f7;padding:6px;margin:0}
#flips td pre{max-height:140px}.scroll{max-height:640px;overflow:auto;border:1px solid #ddd}
.muted{color:#666}select{margin-right:12px}"""

FLIPS_JS = """const flips=JSON.parse(document.getElementById('flips-data').textContent);
const esc=s=>String(s??'').replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function fill(id,key){const s=document.getElementById(id);[...new Set(flips.map(f=>f[key]))].sort()
.forEach(v=>{const o=document.createElement('option');o.value=o.textContent=v;s.appendChild(o)});
s.addEventListener('change',render)}
function render(){const pick=id=>document.getElementById(id).value;const rows=flips.filter(f=>
['variant','task','direction'].every(k=>pick('flip-'+k)==='*'||f[k]===pick('flip-'+k)));
document.getElementById('flip-count').textContent=rows.length+' items shown';
document.querySelector('#flips tbody').innerHTML=rows.map(f=>'<tr><td>'+esc(f.variant)+'</td><td>'+esc(f.task)
+'</td><td>'+esc(f.doc_id)+'</td><td>'+esc(f.direction)+'</td><td><pre>'+esc(f.prompt)+'</pre></td><td>'
+esc(f.gold)+'</td><td>'+esc(f.base_answer)+'</td><td>'+esc(f.variant_answer)+'</td></tr>').join('')}
['variant','task','direction'].forEach(k=>fill('flip-'+k,k));render();"""


def write_html(outcomes: list[Outcome], champions: list[ChampionDecision], configs: list[dict[str, Any]]) -> str:
    """The whole page as one string."""
    slo = (configs[0].get("bench") or {}).get("slo") or {} if configs else {}
    sections = [_decision(outcomes, champions), _forest(outcomes), _flips(outcomes),
                _speed_and_cost(outcomes, slo), _section("Pareto view", _figure(pareto_figure(outcomes))),
                _provenance(outcomes, configs)]
    title = f"quantgate report: {', '.join(sorted({o.model for o in outcomes}))}"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body><h1>{_e(title)}</h1>"
            f"<p class='muted'>Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {len(outcomes)} runs.</p>"
            + "".join(sections) + f"<script>{FLIPS_JS}</script></body></html>\n")


def _decision(outcomes: list[Outcome], champions: list[ChampionDecision]) -> str:
    boxes = "".join(_champion_box(d) for d in champions)
    rows = "".join(_verdict_rows(o) for o in outcomes)
    table = ("<table id='verdicts'><tr><th>variant</th><th>verdict</th><th>deciding blocking rule</th><th>status</th>"
             f"<th>interval</th><th>limit</th><th>what would settle it</th></tr>{rows}</table>")
    return _section("Decision", boxes + table + _all_rules(outcomes))


def _champion_box(decision: ChampionDecision) -> str:
    name = decision.champion or "none (no variant was PROMOTEd)"
    ranking = "".join(f"<li>{_e(describe(c))}</li>" for c in decision.ranking)
    previous = describe(decision.previous_holder) if decision.previous_holder else "none"
    return (f"<div class='champion' id='champion-{_e(decision.model)}'><b>Champion of {_e(decision.model)}: "
            f"<span class='champion-name'>{_e(name)}</span></b> (policy <code>{_e(decision.policy)}</code>)"
            f"<p>{_e(decision.reason)}</p><p>Ranking:</p><ol>{ranking}</ol>"
            f"<p>Runner-up: {_e(decision.runner_up or 'none')}. Previous alias holder: {_e(previous)}.</p></div>")


def _verdict_rows(outcome: Outcome) -> str:
    """The verdict, then each blocking rule that did not PASS (the ones that decided), or that all passed."""
    label = outcome.verdict.decision if outcome.verdict else ("FAILED" if outcome.error else "no verdict")
    blocking = [r for r in outcome.verdict.rules if r.blocking] if outcome.verdict else []
    deciding = [r for r in blocking if r.status != "PASS"]
    head = f"<td>{_e(outcome.variant_name)}</td><td class='{label}'>{label}</td>"
    if not deciding:
        note = outcome.error or (f"all {len(blocking)} blocking rules PASS" if blocking else "")
        return f"<tr>{head}<td colspan='5'>{_e(note)}</td></tr>"
    cells = [_rule_cells(rule) for rule in deciding]
    span = f" rowspan='{len(cells)}'" if len(cells) > 1 else ""
    first = head.replace("<td>", f"<td{span}>").replace("<td class=", f"<td{span} class=")
    return f"<tr>{first}{cells[0]}</tr>" + "".join(f"<tr>{c}</tr>" for c in cells[1:])


def _rule_cells(rule: RuleResult) -> str:
    interval = (f"[{rule.low:+.4g}, {rule.high:+.4g}] {rule.method or ''}" if rule.low is not None
                else _num(rule.observed))
    settle = (f"~{rule.items_to_settle} more items" if rule.items_to_settle
              else ("more items (no estimate)" if rule.status == "INCONCLUSIVE" else ""))
    return (f"<td>{_e(rule.rule)} {_e(rule.scope)}</td><td class='{_e(rule.status)}'>{_e(rule.status)}</td>"
            f"<td>{_e(interval)}</td><td>{_num(rule.threshold)}</td><td>{_e(settle)}</td>")


def _all_rules(outcomes: list[Outcome]) -> str:
    rows = "".join(f"<tr><td>{_e(o.variant_name)}</td>{_rule_cells(r)}<td>{'yes' if r.blocking else 'no'}</td></tr>"
                   for o in outcomes if o.verdict for r in o.verdict.rules)
    return ("<details><summary>every rule of every variant</summary><table><tr><th>variant</th><th>rule</th>"
            "<th>status</th><th>interval</th><th>limit</th><th>what would settle it</th><th>blocking</th></tr>"
            f"{rows}</table></details>")


def _forest(outcomes: list[Outcome]) -> str:
    figures = forest_figures(outcomes)
    note = "<p class='muted'>Accuracy delta (variant - base) with its interval; the red line is -tolerance.</p>"
    return _section("Accuracy delta per task", note + "".join(map(_figure, figures)) if figures else "no fidelity data")


def _flips(outcomes: list[Outcome]) -> str:
    flips, unreadable = [], []
    for outcome in outcomes:
        try:
            flips += [{"variant": outcome.variant_name, **vars(f)} for f in outcome_flips(outcome)]
        except InputError as error:  # the verdict stands on its records; only this listing is lost
            unreadable.append(f"<p class='FAIL'>{_e(outcome.variant_name)}: items not listed: {_e(error)}</p>")
    counts = "".join(f"<tr><td>{_e(o.variant_name)}</td><td>{_e(t.task)}</td><td>{t.right_to_wrong}</td>"
                     f"<td>{t.wrong_to_right}</td><td>{_listed(flips, o.variant_name, t.task)}</td></tr>"
                     for o in outcomes if o.fidelity for t in o.fidelity.tasks)
    filters = "".join(f"<label>{k} <select id='flip-{k}'><option value='*'>all</option></select></label>"
                      for k in ("variant", "task", "direction"))
    data = json.dumps(flips, ensure_ascii=False).replace("</", "<\\/")
    return _section("Flips: items whose answer changed", (
        "<table id='flip-counts'><tr><th>variant</th><th>task</th><th>right→wrong (record)</th>"
        f"<th>wrong→right (record)</th><th>{_e(SAME_SCORE)} (listed too)</th></tr>{counts}</table>{''.join(unreadable)}"
        f"<p>{filters}<span id='flip-count'></span></p><div class='scroll'><table id='flips'><thead><tr>"
        "<th>variant</th><th>task</th>"
        "<th>doc</th><th>direction</th><th>prompt</th><th>gold</th><th>base answer</th><th>variant answer</th></tr>"
        f"</thead><tbody></tbody></table></div><script type='application/json' id='flips-data'>{data}</script>"))


def _listed(flips: list[dict[str, Any]], variant: str, task: str) -> int:
    return sum(f["variant"] == variant and f["task"] == task and f["direction"] == SAME_SCORE for f in flips)


def _speed_and_cost(outcomes: list[Outcome], slo: dict[str, Any]) -> str:
    figures = latency_figures(outcomes, slo)
    body = "".join(map(_figure, figures)) or "<p>no benchmark data</p>"
    saving = saving_figure(outcomes)
    paired = _figure(saving) if saving else "<p>no paired cost saving (unpaired or single-round benchmarks)</p>"
    return _section("Speed and cost", body + _figure(cost_figure(outcomes)) + paired)


def _provenance(outcomes: list[Outcome], configs: list[dict[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{_e(o.variant_name)}</td><td>{_e(o.variant.content_hash if o.variant else '-')}</td>"
                   f"<td>{_e(_versions(o))}</td><td>{_e(o.output_dir or '-')}</td><td><code>{_e(o.run_id)}</code></td>"
                   "</tr>" for o in outcomes)
    suites = next((o.base_eval.suite_hashes for o in outcomes if o.base_eval), {})
    suite_rows = "".join(f"<tr><td>{_e(t)}</td><td><code>{_e(h)}</code></td></tr>" for t, h in sorted(suites.items()))
    tracking = (configs[0].get("tracking") or {}) if configs else {}
    config = yaml.safe_dump(configs[0], sort_keys=False) if configs else ""
    return _section("Versions, config, suites, MLflow", (
        "<table><tr><th>run</th><th>checkpoint hash</th><th>library versions</th><th>outputs</th><th>MLflow run id</th>"
        f"</tr>{rows}</table>"
        f"<table><tr><th>task</th><th>suite hash</th></tr>{suite_rows}</table>"
        f"{_tracked_where(tracking)}<details><summary>config (first run)</summary><pre>{_e(config)}</pre>"
        "</details>"))


def _tracked_where(tracking: dict) -> str:
    """Where the runs are in MLflow; a tracker without an MLflow URI (tracking=off, another backend) says so."""
    if not tracking.get("enabled", True) or "uri" not in tracking or "experiment" not in tracking:
        return f"<p>Not tracked in MLflow (tracking={_e(tracking.get('name'))}).</p>"
    return (f"<p>MLflow: experiment <code>{_e(tracking['experiment'])}</code> at <code>{_e(tracking['uri'])}</code>"
            f" (runs named <code>&lt;model&gt;/&lt;variant&gt;</code>; open with <code>mlflow ui --backend-store-uri "
            f"{_e(tracking['uri'])}</code>).</p>")


def _versions(outcome: Outcome) -> str:
    versions = {**(outcome.variant.versions if outcome.variant else {}),
                **(outcome.bench.versions if outcome.bench else {})}
    return ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "-"


def _figure(figure: go.Figure) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _e(value: Any) -> str:
    return html.escape(str(value if value is not None else "-"))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
