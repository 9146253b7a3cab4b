"""MLflow param, metric and tag names for an `Outcome`: public API, computed here and nowhere else.

`python -m pytest tests/test_track.py` reads them back from a real MLflow store.

Params: the resolved config flattened to `a.b.c` keys; secrets (keys named token, secret,
password, api_key, access_key, ...; values that look like `hf_...` tokens or `user:pass@` in a
URL) become `***`.

Metrics (`<task>` is the lm-eval task name, `<k>` a batch size / concurrency level):
- `fidelity/<task>/{n, base_score, variant_score, delta, ci_low, ci_high, confidence, mcnemar_p,
  right_to_wrong, wrong_to_right, flips, flip_rate, choice_kl_mean, choice_kl_p95,
  choice_top1_agreement}`; `fidelity/mean_{base_score,variant_score,delta}` over tasks
- `fidelity/reference/{kl_mean, kl_p95, top1_agreement, base_perplexity, variant_perplexity,
  perplexity_ratio, tokens}` (reference-text divergence)
- `agreement/<model>/<task>/{agreement, n, max_loglikelihood_diff}` (served runs: served vs
  in-process per-item agreement of the base and the variant)
- `eval/<task>/{score, stderr, n}` (this run's own scores; the only accuracy metrics of the base run)
- `bench/bs<k>/{output_tokens_per_s, output_tokens_per_s_std, requests_per_s, goodput_rps,
  meets_slo, ttft_p50_ms, ttft_p95_ms, ttft_p99_ms, itl_p50_ms, ..., tpot_p50_ms, ..., e2e_p99_ms}`;
  served levels (bench=served) as `bench/<load>/...` (`c4`: 4 streams, `r2.5`: 2.5 requests/s, `sync`)
  with also `batch_size, errored_requests, incomplete_requests`;
  `bench/{knee_batch_size, peak_memory_bytes, checkpoint_bytes}`; paired runs, variant vs base per level:
  `bench/<level>/vs_base/{output_tokens_per_s,ttft,itl}_ratio` with `_low`/`_high` (t interval on per-round
  log ratios at the gate's confidence; bounds left out when infinite); `bench/conditions/{load_avg_before,
  load_avg_after, steal_fraction, max_tokens_per_s_cv, noisy}` (1-minute load average; noisy 1: warned)
- `cost/{usd_per_1m_tokens, output_tokens_per_s, replicas, monthly_usd, price_per_hour,
  decode_roofline_fraction, decode_tokens_per_s, decode_roofline_tokens_per_s, slo_met}` (slo_met 0:
  no load level met the SLO, the cost is at the best measured load; decode figures at the cost level's
  batch, measured beside the roofline's bound); `cost/saving_vs_base` with `_low`/`_high` (paired runs
  only); `cost/projected/<hardware>/{usd_per_1m_tokens, replicas, monthly_usd}` (roofline
  projections, never measured)
- `variant/{size_bytes, quantize_seconds}`; `gate/decision` (1 PROMOTE, 0 INCONCLUSIVE, -1 REJECT);
  `gate/exit_code` (what the CLI exits with for this variant, also the tag `quantgate.exit_code`)
- Headline copies a reviewer finds without reading code (the detailed names above stay):
  `score/<task>` (the variant's score), `delta/<task>` (variant - base), `cost/usd_per_1m_output_tokens`,
  `throughput/knee_tokens_per_s` (output tokens/s at the SLO knee), `size/checkpoint_mb`
- `time/<stage>_seconds` (wall clock of each stage this run, cached or not), `time/total_seconds`

Tags: `quantgate.{model, variant, quant, scheme, backend, engine, role, sweep, verdict, policy,
content_hash, error, git_commit, reused}` (`reused`: the stages answered from the cache, or `none`),
`quantgate.version.<library>`, `quantgate.suite.<task>`
(`<version>@<content hash>`); served runs: `quantgate.serve.{engine, engine_version, engine_args}`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from pipelines.records import BenchResult, CostResult, EvalResult, Fidelity, Outcome, RatioInterval
from pipelines.redact import redact, redact_config

_UNSAFE_KEY_CHARS = re.compile(r"[^\w./ -]")
DECISION_CODES = {"PROMOTE": 1.0, "INCONCLUSIVE": 0.0, "REJECT": -1.0}


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}, secrets redacted."""
    flat: dict[str, str] = {}
    for key, value in redact_config(config).items():
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, prefix=f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def outcome_metrics(outcome: Outcome) -> dict[str, float]:
    # Headline metrics first: the UI lists metrics in logged order, and its compare view's
    # parallel-coordinates plot opens on the first one (gate/decision).
    metrics: dict[str, float | None] = {}
    if outcome.verdict:
        metrics["gate/decision"] = DECISION_CODES[outcome.verdict.decision]
    metrics.update(headline_metrics(outcome))
    metrics.update(time_metrics(outcome))
    if outcome.fidelity:
        metrics.update(fidelity_metrics(outcome.fidelity))
    if outcome.variant_eval:
        metrics.update(eval_metrics(outcome.variant_eval))
    if outcome.bench:
        metrics.update(bench_metrics(outcome.bench))
    if outcome.cost:
        metrics.update(cost_metrics(outcome.cost))
    if outcome.variant:
        metrics.update({"variant/size_bytes": outcome.variant.size_bytes,
                        "variant/quantize_seconds": outcome.variant.quantize_seconds})
    if outcome.verdict:
        metrics["gate/decision"] = DECISION_CODES[outcome.verdict.decision]
        for rule in outcome.verdict.rules:  # the interval each rule decided on
            for side in ("low", "high"):
                metrics[f"gate/{rule.rule}/{_key(rule.scope)}/{side}"] = getattr(rule, side)
    metrics["gate/exit_code"] = outcome.exit_code
    # A rule without a usable interval has infinite bounds: not a number MLflow should plot.
    return {key: float(value) for key, value in metrics.items() if value is not None and math.isfinite(value)}


def outcome_summary(outcome: Outcome, metrics: dict[str, float]) -> dict[str, Any]:
    """summary.json: the verdict, the exit code the process returns for this variant, and its metrics."""
    verdict = dataclasses.asdict(outcome.verdict) if outcome.verdict else None
    return {"variant": outcome.variant_name, "model": outcome.model, "error": outcome.error,
            "decision": verdict["decision"] if verdict else None, "exit_code": outcome.exit_code,
            "verdict": verdict, "metrics": metrics, "serve": _serve_settings(outcome),
            "sequential": sequential_summary(outcome), "bench_conditions": bench_conditions(outcome)}


def bench_conditions(outcome: Outcome) -> dict[str, Any] | None:
    """What else used the machine while the variant's benchmark ran, and why its figures are noisy."""
    found = outcome.bench.conditions if outcome.bench else None
    return dataclasses.asdict(found) if found else None


def sequential_summary(outcome: Outcome) -> list[dict[str, Any]] | None:
    """Sequential runs: per task, items used of those available and why it stopped; else None."""
    records = outcome.variant_eval.sequential if outcome.variant_eval else []
    return [{"task": r.task, "items_used": r.items_used, "items_available": r.items_available,
             "looks": r.looks, "stop_reason": r.stop_reason} for r in records] or None


def _serve_settings(outcome: Outcome) -> dict[str, Any]:
    """The engine that scored the variant: its name, version and args (in-process when not served)."""
    serve = outcome.variant_eval.settings.get("serve") if outcome.variant_eval else None
    return serve or {"engine": "inprocess"}


def headline_metrics(outcome: Outcome) -> dict[str, float | None]:
    """The few numbers that answer "is this variant good and cheap?", under self-explaining names."""
    metrics: dict[str, float | None] = {}
    for t in outcome.fidelity.tasks if outcome.fidelity else []:
        metrics.update({f"score/{_key(t.task)}": t.variant_score, f"delta/{_key(t.task)}": t.delta})
    if outcome.cost and outcome.cost.measured:
        metrics["cost/usd_per_1m_output_tokens"] = outcome.cost.measured.usd_per_million_output_tokens
    knee = outcome.bench.knee() if outcome.bench else None
    if knee:
        metrics["throughput/knee_tokens_per_s"] = knee.output_tokens_per_s
    if outcome.variant:
        metrics["size/checkpoint_mb"] = outcome.variant.size_bytes / 2**20
    return metrics


def time_metrics(outcome: Outcome) -> dict[str, float]:
    metrics = {f"time/{_key(s.stage)}_seconds": s.ended - s.started for s in outcome.stages}
    if outcome.stages:
        metrics["time/total_seconds"] = outcome.stages[-1].ended - outcome.stages[0].started
    return metrics


def metric_task(key: str, tasks: list[str]) -> str | None:
    """The evaluated task a metric is about (it is linked to that task's dataset), else None."""
    for task in tasks:
        if any(key.startswith(f"{family}/{_key(task)}/") or key == f"{family}/{_key(task)}"
               for family in ("fidelity", "eval", "score", "delta")):
            return task
    return None


def fidelity_metrics(fidelity: Fidelity) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    if not fidelity.tasks:
        return metrics
    for t in fidelity.tasks:
        prefix = f"fidelity/{_key(t.task)}"
        for name in ("n", "base_score", "variant_score", "delta", "ci_low", "ci_high", "confidence", "mcnemar_p",
                     "right_to_wrong", "wrong_to_right", "flip_rate", "choice_kl_mean", "choice_kl_p95",
                     "choice_top1_agreement", "design_effect", "clusters", "flip_ci_low", "flip_ci_high",
                     "choice_kl_ci_low", "choice_kl_ci_high", "items_used", "items_available"):
            metrics[f"{prefix}/{name}"] = getattr(t, name)
        metrics[f"{prefix}/flips"] = t.right_to_wrong + t.wrong_to_right
    for name in ("base_score", "variant_score", "delta"):
        metrics[f"fidelity/mean_{name}"] = fidelity.task_mean(name)
    for a in fidelity.agreement:
        prefix = f"agreement/{_key(a.model)}/{_key(a.task)}"
        metrics.update({f"{prefix}/agreement": a.agreement, f"{prefix}/n": a.n,
                        f"{prefix}/max_loglikelihood_diff": a.max_loglikelihood_diff})
    if fidelity.divergence:
        d = fidelity.divergence
        metrics.update({f"fidelity/reference/{name}": getattr(d, name) for name in (
            "tokens", "kl_mean", "kl_p95", "top1_agreement", "base_perplexity", "variant_perplexity",
            "perplexity_ratio", "kl_ci_low", "kl_ci_high", "kl_blocks")})
    return metrics


def eval_metrics(result: EvalResult) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    for t in result.tasks:
        metrics.update({f"eval/{_key(t.task)}/score": t.value, f"eval/{_key(t.task)}/stderr": t.stderr,
                        f"eval/{_key(t.task)}/n": t.n})
    return metrics


def bench_metrics(bench: BenchResult) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {"bench/knee_batch_size": bench.knee_batch_size,
                                        "bench/peak_memory_bytes": bench.peak_memory_bytes,
                                        "bench/checkpoint_bytes": bench.checkpoint_bytes}
    for level in bench.levels:
        # Served levels are named by their load (c4: 4 streams, r2.5: 2.5 requests/s); in-process by batch.
        prefix = f"bench/{_key(level.load)}" if level.load else f"bench/bs{level.batch_size}"
        for name in ("output_tokens_per_s", "output_tokens_per_s_std", "requests_per_s", "goodput_rps"):
            metrics[f"{prefix}/{name}"] = getattr(level, name)
        metrics[f"{prefix}/meets_slo"] = float(level.meets_slo)
        if level.load:
            metrics.update({f"{prefix}/batch_size": level.batch_size, f"{prefix}/errored_requests":
                            level.errored_requests, f"{prefix}/incomplete_requests": level.incomplete_requests})
        for latency in ("ttft", "itl", "tpot", "e2e"):
            percentiles = getattr(level, f"{latency}_ms")
            for p in ("p50", "p95", "p99") if percentiles else ():
                metrics[f"{prefix}/{latency}_{p}_ms"] = getattr(percentiles, p)
    for ratio in bench.ratios:
        prefix = f"bench/{_key(ratio.load) if ratio.load else f'bs{ratio.batch_size}'}/vs_base"
        for name in ("output_tokens_per_s", "ttft", "itl"):
            metrics.update(_interval_metrics(f"{prefix}/{name}_ratio", getattr(ratio, name)))
    if bench.conditions:
        c = bench.conditions
        metrics.update({"bench/conditions/load_avg_before": c.load_avg_before[0],
                        "bench/conditions/load_avg_after": c.load_avg_after[0],
                        "bench/conditions/steal_fraction": c.steal_fraction,
                        "bench/conditions/max_tokens_per_s_cv": c.max_tokens_per_s_cv,
                        "bench/conditions/noisy": float(bool(c.warnings))})
    return metrics


def _interval_metrics(key: str, interval: RatioInterval) -> dict[str, float]:
    """`key` (the estimate), `key_low` and `key_high` (dropped later when unbounded)."""
    return {key: interval.estimate, f"{key}_low": interval.low, f"{key}_high": interval.high}


def cost_metrics(cost: CostResult) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {"cost/decode_roofline_fraction": cost.decode_roofline_fraction,
                                        "cost/decode_tokens_per_s": cost.decode_tokens_per_s,
                                        "cost/decode_roofline_tokens_per_s": cost.decode_roofline_tokens_per_s}
    if cost.measured:
        m = cost.measured
        metrics.update({"cost/usd_per_1m_tokens": m.usd_per_million_output_tokens, "cost/slo_met": m.slo_met,
                        "cost/output_tokens_per_s": m.output_tokens_per_s, "cost/replicas": m.replicas_for_target,
                        "cost/monthly_usd": m.monthly_usd, "cost/price_per_hour": m.price_per_hour})
    if cost.saving_vs_base:
        metrics.update(_interval_metrics("cost/saving_vs_base", cost.saving_vs_base))
    for p in cost.projected:
        prefix = f"cost/projected/{_key(p.hardware)}"
        metrics.update({f"{prefix}/usd_per_1m_tokens": p.usd_per_million_output_tokens,
                        f"{prefix}/replicas": p.replicas_for_target, f"{prefix}/monthly_usd": p.monthly_usd})
    return metrics


def outcome_tags(outcome: Outcome, config: dict[str, Any], role: str) -> dict[str, str]:
    quant = config.get("quant", {})
    tags = {"quantgate.model": outcome.model, "quantgate.variant": outcome.variant_name, "quantgate.role": role,
            "quantgate.quant": quant.get("name", outcome.variant_name), "quantgate.sweep": config.get("sweep")}
    if outcome.variant:
        tags.update({"quantgate.scheme": outcome.variant.scheme or "none", "quantgate.backend": outcome.variant.backend,
                     "quantgate.content_hash": outcome.variant.content_hash})
        tags.update({f"quantgate.version.{lib}": v for lib, v in outcome.variant.versions.items()})
    if outcome.bench:
        tags.update({f"quantgate.version.{lib}": v for lib, v in outcome.bench.versions.items()})
        tags.update({"quantgate.bench.engine": outcome.bench.engine, "quantgate.bench.knee": outcome.bench.knee_load})
    if outcome.variant_eval:
        eval_versions = outcome.variant_eval.settings.get("versions", {})
        tags.update({f"quantgate.version.{lib}": v for lib, v in eval_versions.items()})
        hashes = outcome.variant_eval.suite_hashes
        tags.update({f"quantgate.suite.{_key(t.task)}": f"{t.version}@{hashes.get(t.task, '?')}"
                     for t in outcome.variant_eval.tasks})
        serve = outcome.variant_eval.settings.get("serve")  # served runs: the engine that scored it
        if serve:
            tags.update({"quantgate.serve.engine": serve["engine"], "quantgate.serve.engine_version":
                         serve["engine_version"], "quantgate.serve.engine_args": json.dumps(serve["engine_args"])})
    if outcome.verdict:
        tags.update({"quantgate.verdict": outcome.verdict.decision, "quantgate.policy": outcome.verdict.policy})
    for record in sequential_summary(outcome) or []:  # metrics hold the counts; the reason is words
        tags[f"quantgate.sequential.{_key(record['task'])}"] = (
            f"{record['items_used']}/{record['items_available']} items: {record['stop_reason']}")
    tags["quantgate.exit_code"] = outcome.exit_code
    tags["quantgate.engine"] = engine_name(outcome, config)
    if outcome.stages:
        tags["quantgate.reused"] = ",".join(s.stage for s in outcome.stages if s.from_cache) or "none"
    if outcome.error:
        tags["quantgate.error"] = outcome.error[:5000]
    return {key: redact(str(value)) for key, value in tags.items() if value is not None}


def run_name(outcome: Outcome) -> str:
    return f"{outcome.model}/{outcome.variant_name}"


def engine_name(outcome: Outcome, config: dict[str, Any]) -> str | None:
    """What served the checkpoint for scoring and timing: the bench's engine, else the serve config's."""
    if outcome.bench:
        return outcome.bench.engine
    return (config.get("serve") or {}).get("name")


def safe_name(name: str) -> str:
    """A task or hardware name made safe for an MLflow key (letters, digits, _ - . / space)."""
    return _UNSAFE_KEY_CHARS.sub("_", name)


_key = safe_name
