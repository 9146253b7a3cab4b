"""The typed records stages exchange, and their one JSON format (`save_record` / `load_record`).

Flow: quantize -> Variant; evaluate -> EvalResult; fidelity -> Fidelity; benchmark -> BenchResult;
cost -> CostResult; gate -> Verdict. Track and report only read these.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipelines.shape import ModelShape
from pipelines.storage import atomic_write_text

R = TypeVar("R")


@dataclass
class Variant:
    name: str
    base: str
    backend: str
    method: str
    scheme: str | None
    checkpoint_dir: str
    size_bytes: int
    # Hash of the checkpoint's files: the identity evaluation results are cached and compared by.
    content_hash: str
    cache_key: str
    quantize_seconds: float
    from_cache: bool
    versions: dict[str, str] = field(default_factory=dict)
    # Provenance, resolved once by the quantize stage and kept out of every cache key: the checkpoint's
    # shape from its config.json (None where it describes no decoder: the cost stage then says why), and
    # the calibration data it was made from (None: its method reads none), as the resolved file or
    # `hf:<dataset>` with its content hash (of the file; of the calibration settings for a hub dataset).
    shape: ModelShape | None = None
    calibration_source: str | None = None
    calibration_hash: str | None = None


@dataclass
class ServedModel:
    """A checkpoint behind an OpenAI-compatible endpoint: what scoring and benchmarking talk to."""

    # Root of the OpenAI API, e.g. http://127.0.0.1:8123/v1 (".../completions" is appended by users).
    base_url: str
    # The model name the server answers to (the "model" field of every request).
    model: str
    # A local directory holding the checkpoint's tokenizer (token counts, BOS, prompts as ids).
    tokenizer_dir: str
    # Which serve backend produced it (vllm, endpoint, ...), its version and its engine args:
    # base and variant must share all three to be comparable.
    engine: str
    engine_version: str
    engine_args: dict[str, Any] = field(default_factory=dict)
    # How quantgate knows the server serves this checkpoint (it started it, or the endpoint's root
    # matches); False only when serve.trust_endpoint=true let an unchecked endpoint be scored.
    identity: str = ""
    identity_verified: bool = True
    # The key requests to the server carry (a Bearer header), when it needs one. Held in memory only:
    # a ServedModel is never saved, and repr leaves the key out.
    api_key: str | None = field(default=None, repr=False)


@dataclass
class TaskResult:
    task: str
    version: str
    output_type: str
    metric: str
    value: float
    stderr: float | None
    n: int
    # Per-item records (see pipelines/evaluate/items.py for the format).
    items_path: str
    # The document field items were clustered by (their `cluster`), if the task names one.
    cluster_key: str | None = None


@dataclass
class TaskAgreement:
    """Served vs in-process scoring of the same items: the check that the served numbers are the model's."""

    model: str
    task: str
    # Items scored both ways (paired by doc_id) and how many got the same prediction and score.
    n: int
    agreeing: int
    agreement: float
    # Largest |served - in-process| log-likelihood over paired choices/continuations (None: generation).
    max_loglikelihood_diff: float | None


@dataclass
class SequentialTask:
    """How a sequential evaluation (eval.sequential=true) went for one task: pipelines/evaluate/sequential.py."""

    task: str
    items_used: int
    items_available: int
    looks: int
    # "decided by the confidence sequence" (every blocking rule PASSed or FAILed at an interim look),
    # "verdict settled" (a blocking rule of some
    # task FAILed: REJECT whatever the rest say) or "suite exhausted, ..." (the final look: the
    # fixed-n intervals decide, pipelines/fidelity.py).
    stop_reason: str
    # Anytime-valid bounds at the stop (pipelines/confidence_sequence.py), in the metric's units;
    # kl is the mean of choice KL clipped at kl_clip nats (None for tasks without choices).
    method: str
    drop_low: float
    drop_high: float
    flip_low: float
    flip_high: float
    kl_low: float | None = None
    kl_high: float | None = None
    kl_clip: float | None = None


@dataclass
class EvalResult:
    model: str
    model_hash: str
    settings: dict[str, Any]
    settings_hash: str
    suite_hashes: dict[str, str]
    tasks: list[TaskResult]
    # Log-probabilities over the reference text (safetensors), for KL against the base.
    reference_logprobs_path: str | None
    seconds: float
    from_cache: bool = False
    # Served runs: per-task agreement with in-process scoring on serve.agreement_items items.
    agreement: list[TaskAgreement] = field(default_factory=list)
    # Sequential runs (the variant's record): items used and why each task stopped.
    sequential: list[SequentialTask] = field(default_factory=list)
    # Served runs: what served the scored checkpoint, as this run established it (ServedModel.identity).
    served_identity: str | None = None
    served_identity_verified: bool = True
    # Provenance, resolved once by the evaluate stage and kept out of the cache key: the suite folder
    # (None: lm-eval's built-in tasks) and the reference text file (None: no reference pass).
    include_path: str | None = None
    reference_text_path: str | None = None


@dataclass
class TaskFidelity:
    task: str
    metric: str
    n: int
    base_score: float
    variant_score: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    mcnemar_p: float | None
    right_to_wrong: int
    wrong_to_right: int
    flip_rate: float
    # Multiple-choice tasks: KL and top-1 agreement between the normalised choice distributions.
    choice_kl_mean: float | None = None
    choice_kl_p95: float | None = None
    choice_top1_agreement: float | None = None
    # How ci_low/ci_high were computed (pipelines/intervals.py), and by which cluster key (if any):
    # design_effect = clustered width / independent-items width of the accuracy interval.
    ci_method: str = ""
    cluster_key: str | None = None
    clusters: int | None = None
    design_effect: float = 1.0
    # Interval of flip_rate (Clopper-Pearson) and of choice_kl_mean (studentized bootstrap), at `confidence`.
    flip_ci_low: float | None = None
    flip_ci_high: float | None = None
    flip_ci_method: str = ""
    choice_kl_ci_low: float | None = None
    choice_kl_ci_high: float | None = None
    choice_kl_ci_method: str = ""
    # Count intervals (Tango, Clopper-Pearson) with clusters: the level-free design effect (Rao-Scott
    # variance ratio) they divided the counts by, so the gate recomputes them exactly at another level.
    delta_variance_ratio: float | None = None
    flip_variance_ratio: float | None = None
    # Sequential runs: items scored of those available and why the task stopped (else None).
    items_used: int | None = None
    items_available: int | None = None
    stop_reason: str | None = None


@dataclass
class Divergence:
    tokens: int
    kl_mean: float
    kl_p95: float
    top1_agreement: float
    base_perplexity: float
    variant_perplexity: float
    perplexity_ratio: float
    # Interval of kl_mean from a bootstrap over blocks of tokens (token KLs are dependent), at the gate's confidence.
    kl_ci_low: float | None = None
    kl_ci_high: float | None = None
    kl_ci_method: str = ""
    kl_blocks: int | None = None


@dataclass
class Fidelity:
    variant: str
    reference: str
    variant_hash: str
    reference_hash: str
    settings_hash: str
    tasks: list[TaskFidelity]
    divergence: Divergence | None
    # Served runs: served vs in-process agreement of the reference and the variant (gate rule `agreement`).
    agreement: list[TaskAgreement] = field(default_factory=list)
    # Served runs: role -> why its endpoint's checkpoint is unverified (gate rule `identity`: never PROMOTE).
    unverified_endpoints: dict[str, str] = field(default_factory=dict)

    def task_mean(self, name: str) -> float | None:
        """One TaskFidelity field (base_score, variant_score, delta) averaged over tasks; None without tasks."""
        if not self.tasks:
            return None
        return sum(getattr(t, name) for t in self.tasks) / len(self.tasks)


@dataclass
class Percentiles:
    p50: float
    p95: float
    p99: float


@dataclass
class LoadLevel:
    batch_size: int
    requests: int
    repeats: int
    output_tokens_per_s: float
    output_tokens_per_s_std: float
    requests_per_s: float
    ttft_ms: Percentiles
    itl_ms: Percentiles
    e2e_ms: Percentiles
    goodput_rps: float
    meets_slo: bool
    # Means feed Little's law (E2E) and the decode roofline fraction (ITL); peak memory of this level.
    itl_mean_ms: float | None = None
    e2e_mean_ms: float | None = None
    peak_memory_bytes: int | None = None
    # Served levels (bench.engine=openai): the load's name ("c4": 4 streams, "r2.5": 2.5 requests/s,
    # "sync"), its target rate, TPOT = (E2E - TTFT) / (N - 1), and requests that errored or never finished.
    load: str | None = None
    rate_rps: float | None = None
    tpot_ms: Percentiles | None = None
    errored_requests: int = 0
    incomplete_requests: int = 0
    # Per repeat (round) of this level, in order: what paired ratios and their intervals are computed from.
    repeat_output_tokens_per_s: list[float] = field(default_factory=list)
    repeat_ttft_mean_ms: list[float] = field(default_factory=list)
    repeat_itl_mean_ms: list[float] = field(default_factory=list)


@dataclass
class RatioInterval:
    """A variant/base ratio of paired means (or a saving derived from one) with its interval at `confidence`
    over `rounds` paired rounds (pipelines/ratios.py); low/high are -inf/inf when the interval is unbounded."""

    estimate: float
    low: float
    high: float
    confidence: float
    rounds: int
    method: str

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


@dataclass
class LevelRatio:
    """Variant vs base at one load level of a paired bench run: output tokens/s, mean TTFT and mean ITL."""

    batch_size: int
    load: str | None
    output_tokens_per_s: RatioInterval
    ttft: RatioInterval
    itl: RatioInterval


@dataclass
class BenchConditions:
    """What else was using the machine while a benchmark ran, and how much its repeats spread."""

    cpu_model: str
    cpus: int
    # 1-, 5- and 15-minute load averages (os.getloadavg) just before and just after the run.
    load_avg_before: list[float]
    load_avg_after: list[float]
    # Share of CPU time stolen by the hypervisor during the run (/proc/stat); None where unreadable.
    steal_fraction: float | None
    # nvidia-smi's view where there is a GPU: one line per GPU (name, utilisation, memory) and per process.
    gpus: list[str] = field(default_factory=list)
    # Largest coefficient of variation of per-repeat output tokens/s over the levels (None: one repeat).
    max_tokens_per_s_cv: float | None = None
    # One line per reason the figures are noisy (high spread, background load, steal); empty when clean.
    warnings: list[str] = field(default_factory=list)


@dataclass
class BenchResult:
    variant: str
    engine: str
    device: str
    levels: list[LoadLevel]
    knee_batch_size: int | None
    # None when the model runs in another process (a served endpoint) whose memory is not measured.
    peak_memory_bytes: int | None
    memory_kind: str
    checkpoint_bytes: int
    versions: dict[str, str] = field(default_factory=dict)
    from_cache: bool = False
    # The knee level's load name (served levels; see LoadLevel.load) and the ServedModel's engine,
    # version and args when the bench ran against an endpoint.
    knee_load: str | None = None
    server: dict[str, Any] | None = None
    # Reports the bench engine wrote (e.g. GuideLLM's HTML and JSON), logged as run artifacts.
    reports: list[str] = field(default_factory=list)
    # Identity of the bench run that timed it: base and variant of one paired run share it, and
    # ratios are only ever computed between records that do (pipelines/bench/paired.py).
    pairing_id: str | None = None
    # Variant vs base per load level (paired runs only; empty for the base and unpaired runs).
    ratios: list[LevelRatio] = field(default_factory=list)
    conditions: BenchConditions | None = None

    def knee(self) -> LoadLevel | None:
        """The knee the bench stage chose (knee_batch_size, and knee_load for served levels); None without one."""
        if self.knee_batch_size is None:
            return None
        return next((lv for lv in self.levels if lv.batch_size == self.knee_batch_size
                     and (self.knee_load is None or lv.load == self.knee_load)), None)

    def cost_level(self) -> LoadLevel | None:
        """The level cost is computed at: the knee, else (no level meets the SLO) the most output tokens/s.
        Cost, report, tracker and gate all read this; none picks a level itself."""
        if not self.levels:
            return None
        return self.knee() or max(self.levels, key=lambda lv: lv.output_tokens_per_s)


@dataclass
class CostEstimate:
    hardware: str
    # "measured" on the hardware the bench ran on, or "projected" from the roofline model.
    basis: str
    price_per_hour: float
    output_tokens_per_s: float
    usd_per_million_output_tokens: float
    replicas_for_target: int
    monthly_usd: float
    # The load (requests per batch) the estimate is at, and the mean E2E latency used in Little's law.
    batch_size: int | None = None
    e2e_latency_s: float | None = None
    # False when no load level met the SLO: the estimate is then at the best measured load instead.
    slo_met: bool = True


@dataclass
class CostResult:
    variant: str
    target_qps: float
    headroom: float
    measured: CostEstimate | None
    projected: list[CostEstimate]
    # Measured batch-1 decode tokens/s over the bandwidth roofline bound on the measured hardware.
    decode_roofline_fraction: float | None
    # At the cost level's batch: measured decode tokens/s (batch / mean ITL) beside the roofline's bound.
    decode_tokens_per_s: float | None = None
    decode_roofline_tokens_per_s: float | None = None
    # 1 - variant $/1M / base $/1M with its interval, from a paired bench run only (else None).
    saving_vs_base: RatioInterval | None = None


@dataclass
class RuleResult:
    rule: str
    scope: str
    blocking: bool
    status: str
    observed: float | None
    bound: float | None
    threshold: float | None
    message: str
    items_to_settle: int | None = None
    # The interval the rule decided on (None for rules without one) and how it was computed.
    low: float | None = None
    high: float | None = None
    method: str | None = None


@dataclass
class Verdict:
    variant: str
    decision: str
    rules: list[RuleResult]
    reasons: list[str]
    # Name of the gate policy (conf/gate/*.yaml) that decided.
    policy: str | None = None


@dataclass
class Contender:
    """A PROMOTEd variant as the champion policy sees it (pipelines/champion.py); None: not measured."""

    variant: str
    content_hash: str
    usd_per_million_output_tokens: float | None
    size_bytes: int | None
    # Accuracy delta vs base averaged over tasks (higher is more faithful).
    mean_delta: float | None
    # The registry version, for the alias holder of an earlier run (None: a variant of this command).
    version: str | None = None
    # Lower confidence bound of the paired cost saving vs base (CostResult.saving_vs_base.low); None unpaired.
    cost_saving_low: float | None = None


@dataclass
class ChampionDecision:
    """Which PROMOTEd variant the registry alias goes to, and why (pipelines/champion.py)."""

    model: str
    policy: str
    # Best first: this command's PROMOTEd variants and the alias's holder before it (if any).
    ranking: list[Contender]
    champion: str | None
    runner_up: str | None
    previous_holder: Contender | None
    # True when the previous holder stays champion: the alias does not move.
    kept: bool
    reason: str


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def save_record(record: Any, path: str | Path) -> Path:
    """Write a record as JSON, atomically (a reader never sees half a file)."""
    text = json.dumps(to_dict(record), indent=2, sort_keys=True, default=float)
    return atomic_write_text(Path(path), text + "\n")


def load_record(cls: type[R], path: str | Path) -> R:
    return from_dict(cls, json.loads(Path(path).read_text()))


def from_dict(cls: type[R], data: dict[str, Any]) -> R:
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _convert(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data})


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _convert(next(a for a in args if a is not type(None)), value)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if origin is list:
        return [_convert(args[0], v) for v in value]
    if origin is dict:
        return {k: _convert(args[1], v) for k, v in value.items()}
    return value


@dataclass
class StageTime:
    """When one stage of a variant's run started and ended (Unix seconds), and whether it only
    reused cached results: what the MLflow run's start, end and per-stage durations are made of."""

    stage: str
    started: float
    ended: float
    from_cache: bool = False


@dataclass
class Outcome:
    """Everything one variant's run produced; what the tracker logs and the report reads."""

    variant_name: str
    model: str
    base_variant: Variant | None = None
    variant: Variant | None = None
    base_eval: EvalResult | None = None
    variant_eval: EvalResult | None = None
    fidelity: Fidelity | None = None
    base_bench: BenchResult | None = None
    bench: BenchResult | None = None
    base_cost: CostResult | None = None
    cost: CostResult | None = None
    verdict: Verdict | None = None
    # Set when a stage failed: "<stage>: <message>"; the sweep goes on with the next variant.
    error: str | None = None
    output_dir: str | None = None
    # What this variant alone makes the CLI exit with (0 PROMOTE, 1 REJECT/INCONCLUSIVE, 2, 3).
    exit_code: int = 0
    # The stages that ran, in order, with their wall-clock times.
    stages: list[StageTime] = field(default_factory=list)
    # The tracker's run for this variant (None: not tracked, or not yet: outcome.json is written before tracking).
    run_id: str | None = None
