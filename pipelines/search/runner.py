"""The recipe search on the real pipeline: sensitivity, candidates, the split, every candidate a
child run of one MLflow parent, the chosen one certified on the confirmation split.

    python -m pipelines.search quant=[fp8,w8a8]

Each trial is an ordinary variant run (pipelines/pipeline.run_variant: quantize, evaluate, fidelity,
benchmark, cost, gate) whose evaluate stage is restricted to one side of the split: sequential on
the search side, fixed-n on the confirmation side. Search trials never register a model version;
the confirmation run does as any run does, and the champion alias is crowned from it alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path

from pipelines import models, pareto, pipeline
from pipelines.config import RunConfig
from pipelines.evaluate import effective_add_bos_token, sequential
from pipelines.evaluate.reference import reference_text, reference_windows, write_window_subset
from pipelines.evaluate.suites import resolve_include_path, task_manager
from pipelines.records import EvalResult, Outcome
from pipelines.search import candidates, sensitivity
from pipelines.search.config import SearchConfig
from pipelines.search.procedure import FAILED, Budget, SearchResult, Trial, run_search
from pipelines.search.split import TextSplit, side, split_tasks, split_windows
from pipelines.sizing import model_size
from pipelines.storage import atomic_write_text
from pipelines.sweep import crown_champions
from pipelines.track import make_tracker, resolved_config

log = logging.getLogger(__name__)


def check(cfg: RunConfig) -> None:
    """Preflight: the search split is evaluated sequentially, in process (pipelines/evaluate/sequential.py)."""
    sequential.check(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, sequential=True)))


def search(configs: list[RunConfig], search_cfg: SearchConfig, output_dir: Path) -> SearchResult:
    """Search the recipes built from every config's scheme (configs differ only in `quant`)."""
    cfg, start = configs[0], time.perf_counter()
    base = models.resolve_base(cfg.model)
    text = _text_split(cfg, base, search_cfg.confirmation_share)
    sensitivities = _sensitivities(configs, base, text)
    recipes = candidates.build_candidates([c.quant for c in configs], sensitivities,
                                          model_size(base.config, cfg.model), search_cfg.max_kept,
                                          _plain_costs(configs, base))
    log.info("search: %d candidates, cheapest predicted first: %s", len(recipes), ", ".join(c.name for c in recipes))
    splits = split_tasks(cfg, _manager(cfg), search_cfg.confirmation_share)
    windows = text and {"search": [text.search.start, text.search.stop],
                        "confirmation": [text.confirmation.start, text.confirmation.stop]}
    atomic_write_text(output_dir / "split.json", json.dumps(
        {"tasks": {t: dataclasses.asdict(s) for t, s in splits.items()}, "reference_windows": windows}))
    tracker = make_tracker(cfg.tracking)
    parent = tracker.start_sweep(output_dir.name, resolved_config(cfg)) if tracker else None
    _log_sensitivities(tracker, parent, sensitivities)
    outcomes: dict[str, Outcome] = {}
    on_search = functools.partial(_trial, cfg, output_dir, parent, side(splits, "search"),
                                  text and text.search, "search", outcomes)
    on_confirm = functools.partial(_trial, cfg, output_dir, parent, side(splits, "confirmation"),
                                   text and text.confirmation, "confirmation", outcomes)
    result = run_search(recipes, on_search, on_confirm,
                        Budget(search_cfg.budget.max_candidates, search_cfg.budget.max_items))
    result.grid_items = len(recipes) * sum(len(split.search) for split in splits.values())
    result.seconds = time.perf_counter() - start
    _finish(cfg, result, recipes, list(sensitivities.values()), outcomes, output_dir, tracker, parent)
    return result


def _trial(cfg: RunConfig, output_dir: Path, parent: str | None, doc_ids: dict[str, list[int]],
           windows: range | None, split: str, outcomes: dict[str, Outcome], candidate) -> Trial:
    """One candidate gated on one side of the split; a search trial registers nothing."""
    evaluate = sequential.evaluate_sequential if split == "search" else sequential.evaluate_fixed
    trial_cfg = dataclasses.replace(cfg, quant=candidate.quant)
    untracked = dataclasses.replace(trial_cfg, tracking=dataclasses.replace(cfg.tracking, enabled=False))
    folder = output_dir / split / candidate.name
    log.info("search: %s on the %s split (%d items)", candidate.name, split, sum(map(len, doc_ids.values())))

    def on_side(c: RunConfig, base, variant) -> tuple[EvalResult, EvalResult]:
        scored = evaluate(c, base, variant, doc_ids)
        return tuple(_windows_only(result, windows, folder / f"reference-{role}.safetensors")
                     for role, result in zip(("base", "variant"), scored))

    outcome = pipeline.run_variant(untracked, folder, preflighted=True, evaluator=on_side)
    _track(trial_cfg, outcome, parent, register=split == "confirmation")
    outcomes[f"{split}/{candidate.name}"] = outcome
    trial = trial_of(outcome, candidate, split)
    log.info("search: %s on the %s split: %s after %d items", candidate.name, split, trial.decision, trial.items)
    return trial


def _track(cfg: RunConfig, outcome: Outcome, parent: str | None, register: bool) -> None:
    tracker = make_tracker(cfg.tracking)
    if tracker is not None:
        outcome.run_id = tracker.log_outcome(outcome, resolved_config(cfg), parent_run_id=parent, register=register)


def trial_of(outcome: Outcome, candidate, split: str) -> Trial:
    """The numbers of one trial's outcome that the search and its summary need."""
    failed = outcome.error is not None or outcome.verdict is None
    return Trial(candidate=candidate.name, split=split, decision=FAILED if failed else outcome.verdict.decision,
                 reasons=[outcome.error] if failed else list(outcome.verdict.reasons),
                 items=sum(t.n for t in outcome.variant_eval.tasks) if outcome.variant_eval else 0,
                 exit_code=outcome.exit_code, kept=list(candidate.kept), predicted_bytes=candidate.predicted_bytes,
                 predicted_cost_per_mtok=candidate.predicted_cost_per_mtok,
                 measured_cost_per_mtok=pareto.usd_per_million(outcome),
                 worst_delta_low=pareto.worst_delta_bound(outcome),
                 checkpoint_bytes=outcome.variant.size_bytes if outcome.variant else None,
                 output_dir=outcome.output_dir)


def _windows_only(result: EvalResult, windows: range | None, path: Path) -> EvalResult:
    """`result` with its reference log-probs cut to one side's windows (unchanged when the text is not split)."""
    if windows is None or result.reference_logprobs_path is None:
        return result
    return dataclasses.replace(result, reference_logprobs_path=str(
        write_window_subset(result.reference_logprobs_path, windows, path)))


def _text_split(cfg: RunConfig, base, confirmation_share: float) -> TextSplit | None:
    """The reference text's windows, cut as the evaluate stage cuts them, split between the two sides."""
    text = reference_text(cfg.eval.reference_text)
    if text is None:
        return None
    tokenizer = models.load_tokenizer(base.path, cfg.model.trust_remote_code)
    bos = effective_add_bos_token(tokenizer, cfg.eval.add_bos_token)
    positions = base.config.get("text_config", base.config).get("max_position_embeddings")
    windows = reference_windows(tokenizer, text, positions, window=cfg.eval.reference_window,
                                max_tokens=cfg.eval.reference_max_tokens, add_bos_token=bos)
    split = split_windows(windows, confirmation_share, bos and tokenizer.bos_token_id is not None)
    if split is None:
        log.warning("search: the reference text has %d window(s), too few to split: its KL rule is decided on "
                    "the same text on both sides", len(windows))
    return split


def _sensitivities(configs: list[RunConfig], base, text: TextSplit | None) -> dict:
    """Each scheme's sensitivity, probed on the search side's reference windows only."""
    def probed(cfg: RunConfig) -> RunConfig:
        return cfg if text is None else dataclasses.replace(
            cfg, eval=dataclasses.replace(cfg.eval, reference_max_tokens=text.search_tokens))

    return {cfg.quant.name: sensitivity.measure_sensitivity(probed(cfg), base, cfg.quant) for cfg in configs}


def _log_sensitivities(tracker, parent: str | None, sensitivities: dict) -> None:
    """Each scheme's per-layer sensitivity on the parent run, where the tracker is MLflow's (has a client)."""
    client = getattr(tracker, "client", None)
    if client is not None and parent:
        for measured in sensitivities.values():
            sensitivity.log_sensitivity(client, parent, measured)


def _plain_costs(configs: list[RunConfig], base) -> dict[str, float] | None:
    """Each plain scheme's measured $/1M output tokens (its paired benchmark, cached for its trial),
    and the base's under candidates.BASE; through the pipeline's own stages, so they count as a run does."""
    if not configs[0].bench.enabled:
        return None
    costs = {}
    for cfg in configs:
        reference = pipeline.quantize_variant(cfg, pipeline.BASELINE, base)
        variant = pipeline.quantize_variant(cfg, cfg.quant, base)
        base_bench, bench = pipeline.benchmark_pair(cfg, reference, variant)
        for name, cost in ((candidates.BASE, pipeline.price(cfg, base_bench, reference)),
                           (cfg.quant.name, pipeline.price(cfg, bench, variant))):
            if cost.measured is not None:
                costs.setdefault(name, cost.measured.usd_per_million_output_tokens)
    return costs


def _manager(cfg: RunConfig):
    return task_manager(cfg.eval.tasks, resolve_include_path(cfg.eval.include_path))


def _finish(cfg: RunConfig, result: SearchResult, recipes: list, sensitivities: list,
            outcomes: dict[str, Outcome], output_dir: Path, tracker, parent: str | None) -> None:
    """The recipe's YAML, the summary and the chart; the champion crowned from the confirmation run alone."""
    from pipelines.search.summary import write_summary  # plotly: only once the search has a result

    named = {c.name: c for c in recipes}
    if result.best is not None:
        path = candidates.write_quant_yaml(named[result.best], output_dir / "conf" / "quant" / f"{result.best}.yaml")
        log.info("search: recipe %s written to %s (python -m pipelines.run quant=%s)", result.best, path, path)
    files = write_summary(result, output_dir, sensitivities)
    confirmed = [outcomes[f"confirmation/{result.chosen}"]] if result.chosen else []
    champions = crown_champions(confirmed, cfg.gate.champion_policy, tracker) if confirmed else []
    if tracker is not None and parent:
        tracker.log_sweep_report(parent, files, confirmed, champions)
