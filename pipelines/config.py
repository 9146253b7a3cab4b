"""Typed config schemas for every Hydra config group, validated once at the boundary.

`python -m pipelines.run --cfg job` composes and validates a config without importing torch.
Each group (`conf/<group>/*.yaml`) is checked against its dataclass here; an unknown key is a
Hydra error and a bad value a `ConfigError` naming the field and how to fix it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pipelines.champion import POLICIES as CHAMPION_POLICIES
from pipelines.errors import ConfigError
from pipelines.registry import SERVERS, TRACKERS, resolve


def _positive(owner: str, **values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{owner}.{name}={value} must be > 0")


def _fraction(owner: str, name: str, value: float, closed_low: bool = False, closed_high: bool = False) -> None:
    low_ok = value >= 0 if closed_low else value > 0
    high_ok = value <= 1 if closed_high else value < 1
    if not (low_ok and high_ok):
        raise ConfigError(f"{owner}.{name}={value} must be in "
                          f"{'[' if closed_low else '('}0, 1{']' if closed_high else ')'}")


def _at_least(owner: str, bound: float, **values: float | int | None) -> None:
    # Non-numbers are skipped: a schema built before composition still holds MISSING ("???").
    for name, value in values.items():
        if isinstance(value, (int, float)) and value < bound:
            raise ConfigError(f"{owner}.{name}={value} must be >= {bound}")


@dataclass
class ModelConfig:
    name: str = MISSING
    # "embedded" (the model shipped in the package), a hub id, or a local directory.
    source: str = MISSING
    revision: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    # Pickle checkpoints can run code on load; only safetensors unless the user opts in.
    allow_pickle: bool = False
    # Hub token for gated models; prefer the HF_TOKEN environment variable. Never logged.
    token: str | None = None
    description: str = ""
    # config.json fields that size the model (hidden_size, num_hidden_layers, ...), so plan=true and
    # preflight can size a hub model before any download; its own config.json wins once local.
    shape: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ConfigError("model.source is empty; give 'embedded', a local model directory or a hub id")
        if self.dtype not in {"auto", "float32", "bfloat16", "float16"}:
            raise ConfigError(f"model.dtype={self.dtype} must be one of auto, float32, bfloat16, float16")


@dataclass
class CalibrationConfig:
    # "embedded" (shipped calibration text), a local .txt/.jsonl file, or "hf:<dataset>[:<config>]".
    source: str = "embedded"
    split: str = "train"
    text_field: str = "text"
    # The field holds chat messages ([{role, content}, ...]) rendered with the base model's chat template.
    chat_template: bool = False
    num_samples: int = 64
    max_seq_length: int = 256

    def __post_init__(self) -> None:
        _positive("quant.calibration", num_samples=self.num_samples, max_seq_length=self.max_seq_length)


@dataclass
class PrecisionOverride:
    """Modules quantized with another scheme than the recipe's (e.g. W8A8 layers inside a W4A16 recipe)."""

    # llm-compressor targets: module names or `re:` patterns (e.g. `re:(.*\.)?layers\.3\.`).
    targets: list[str] = MISSING
    # compressed-tensors preset scheme for those modules.
    scheme: str = MISSING

    def __post_init__(self) -> None:
        if not self.targets:
            raise ConfigError(f"quant.precision_overrides: scheme {self.scheme} has no targets; name the modules")


@dataclass
class QuantConfig:
    name: str = MISSING
    # Which engine quantizes: none | llmcompressor | gptqmodel (legacy names give a routed error).
    backend: str = "llmcompressor"
    # Algorithm: none | rtn | gptq | awq | smoothquant_gptq.
    method: str = "none"
    # compressed-tensors preset scheme (FP8_DYNAMIC, W8A8, W4A16, W2A16, ...).
    scheme: str | None = None
    group_size: int | None = None
    ignore: list[str] = field(default_factory=lambda: ["lm_head"])
    needs_calibration: bool = False
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # Library-specific knobs passed through untouched (e.g. AWQ duo_scaling, GPTQ dampening_frac).
    params: dict[str, Any] = field(default_factory=dict)
    # Extra config groups: these modules get their own scheme (more specific targets win over "Linear").
    precision_overrides: list[PrecisionOverride] = field(default_factory=list)

    def __post_init__(self) -> None:
        _positive("quant", group_size=self.group_size)
        if self.method != "none" and not self.scheme:
            raise ConfigError(f"quant.scheme is required for quant.method={self.method}")


@dataclass
class TaskSize:
    """What plan=true needs of a task whose data is on the hub, not here (eval.task_sizes)."""

    items: int = MISSING
    # The split lm-eval scores (its test_split, else validation_split).
    split: str = MISSING
    # Loglikelihood requests per item: the answer choices (multiple choice); 1 for generation.
    requests_per_item: int = 1
    # Prompt tokens per request, few-shot examples included: an assumption, stated in the YAML.
    tokens_per_request: int = MISSING
    # Generation tasks: the most tokens generated per request (lm-eval's max_gen_toks); 0 otherwise.
    max_gen_toks: int = 0
    # Leaf tasks of a group (a sequential run looks at each one separately).
    subtasks: int = 1

    def __post_init__(self) -> None:
        _positive("eval.task_sizes", items=self.items, requests_per_item=self.requests_per_item,
                  tokens_per_request=self.tokens_per_request, subtasks=self.subtasks)
        _at_least("eval.task_sizes", 0, max_gen_toks=self.max_gen_toks)


@dataclass
class EvalConfig:
    name: str = MISSING
    # lm-eval model backend: hf (CPU/GPU) | vllm (where installed).
    runner: str = "hf"
    tasks: list[str] = field(default_factory=list)
    # Extra lm-eval task directory; "embedded" is the bundled evalsuites/ package.
    include_path: str | None = "embedded"
    num_fewshot: int | None = None
    limit: int | None = None
    batch_size: int = 16
    max_length: int | None = None
    seed: int = 1234
    apply_chat_template: bool = False
    # None keeps the tokenizer's own BOS behaviour; base and variant always share the value.
    add_bos_token: bool | None = None
    # Distribution-level fidelity (KL, top-1 agreement, perplexity) on a reference text.
    reference_text: str | None = "embedded"
    reference_max_tokens: int = 4096
    reference_window: int = 256
    # The confidence level of every interval is the gate's (gate.confidence): one level, one decision.
    bootstrap_samples: int = 10000
    # Cluster key per task (a field of its documents, dotted for nested ones, e.g. meta.vendor);
    # overrides the task's own `metadata.cluster_key`. Intervals then resample by cluster.
    cluster_keys: dict[str, str] = field(default_factory=dict)
    # Sequential evaluation (pipelines/evaluate/sequential.py): items in a seeded random order, a
    # look after every chunk_size items, the variant stops once every blocking rule is decided.
    sequential: bool = False
    chunk_size: int = 50
    params: dict[str, Any] = field(default_factory=dict)
    # Sizes of hub tasks, for plan=true's evaluation time and cost (conf/eval/standard.yaml).
    task_sizes: dict[str, TaskSize] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError(f"eval.tasks is empty in eval={self.name}: name at least one lm-eval task")
        _positive("eval", batch_size=self.batch_size, limit=self.limit, max_length=self.max_length,
                  reference_max_tokens=self.reference_max_tokens, reference_window=self.reference_window,
                  bootstrap_samples=self.bootstrap_samples, chunk_size=self.chunk_size)
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"eval.num_fewshot={self.num_fewshot} must be >= 0")


@dataclass
class SLOConfig:
    ttft_p95_ms: float | None = None
    itl_p95_ms: float | None = None
    e2e_p95_ms: float | None = None

    def __post_init__(self) -> None:
        _positive("bench.slo", ttft_p95_ms=self.ttft_p95_ms, itl_p95_ms=self.itl_p95_ms, e2e_p95_ms=self.e2e_p95_ms)


@dataclass
class ServeConfig:
    """What every serve backend shares; base and variant always share it. Each backend in
    registry.SERVERS names its own schema (`config_schema`, a subclass holding its fields), registered
    as serve/<backend>_schema, so a field of one backend is an unknown key under another."""

    name: str = MISSING
    # A name in registry.SERVERS: inprocess (transformers in this process) | vllm | endpoint.
    backend: str = "inprocess"
    # Requests lm-eval keeps in flight while scoring through the endpoint.
    eval_concurrency: int = 4
    # Items per task scored both in-process and served, to report their per-item agreement (0: off).
    agreement_items: int = 0

    def __post_init__(self) -> None:
        _positive("serve", eval_concurrency=self.eval_concurrency)
        if self.agreement_items < 0:
            raise ConfigError(f"serve.agreement_items={self.agreement_items} must be >= 0")


@dataclass
class ParallelServerConfig(ServeConfig):
    """A server quantgate starts, split over tensor_parallel_size x pipeline_parallel_size devices:
    plan=true sizes it (GPUs, memory per GPU) from these fields."""

    # null: the model's own context length.
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # The fraction of each GPU's memory the server may take (weights, KV cache, activations).
    gpu_memory_utilization: float = 0.9
    startup_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("serve", max_model_len=self.max_model_len, tensor_parallel_size=self.tensor_parallel_size,
                  pipeline_parallel_size=self.pipeline_parallel_size, startup_timeout_s=self.startup_timeout_s)
        _fraction("serve", "gpu_memory_utilization", self.gpu_memory_utilization, closed_high=True)


@dataclass
class BenchConfig:
    name: str = MISSING
    enabled: bool = True
    # How to run: hf (transformers generate, in process) | openai (GuideLLM against the served endpoint).
    engine: str = "hf"
    input_tokens: int = 64
    output_tokens: int = 32
    # Load levels: concurrent requests served as one batch (hf) or concurrent streams (openai).
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4])
    requests_per_level: int = 8
    warmup_requests: int = 2
    repeats: int = 3
    seed: int = 0
    slo: SLOConfig = field(default_factory=SLOConfig)
    # Capacity planning: target load and spare capacity kept on top of Little's law.
    target_qps: float = 1.0
    headroom: float = 0.25
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("bench", input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                  requests_per_level=self.requests_per_level, repeats=self.repeats, target_qps=self.target_qps)
        if not self.batch_sizes or min(self.batch_sizes) <= 0:
            raise ConfigError(f"bench.batch_sizes={list(self.batch_sizes)} must be a non-empty list of sizes > 0")
        if self.warmup_requests < 0:
            raise ConfigError(f"bench.warmup_requests={self.warmup_requests} must be >= 0")
        if self.output_tokens < 2:
            raise ConfigError(f"bench.output_tokens={self.output_tokens} gives no inter-token latency; use >= 2")
        _fraction("bench", "headroom", self.headroom, closed_low=True)


@dataclass
class PriceConfig:
    on_demand: float = MISSING
    reserved: float | None = None
    spot: float | None = None

    def __post_init__(self) -> None:
        _at_least("hardware.price_per_hour", 0, on_demand=self.on_demand, reserved=self.reserved, spot=self.spot)


@dataclass
class HardwareConfig:
    name: str = MISSING
    device: str = "cpu"
    # $ per hour for one replica (one machine or one GPU, as the name says).
    price_per_hour: PriceConfig = field(default_factory=PriceConfig)
    price_tier: str = "on_demand"
    memory_bandwidth_gb_s: float = MISSING
    peak_dense_tflops: dict[str, float] = field(default_factory=dict)
    memory_gb: float = MISSING
    # Other hardware names (conf/hardware/*.yaml) to project cost to with the roofline model.
    project_to: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _positive("hardware", memory_bandwidth_gb_s=self.memory_bandwidth_gb_s, memory_gb=self.memory_gb)
        _positive("hardware.peak_dense_tflops", **self.peak_dense_tflops)
        if self.price_tier not in {"on_demand", "reserved", "spot"}:
            raise ConfigError(f"hardware.price_tier={self.price_tier} must be on_demand, reserved or spot")


@dataclass
class SuiteTolerance:
    # Largest acceptable accuracy drop: absolute points (0.02 = 2 points) or relative to base.
    max_drop: float = 0.02
    kind: str = "absolute"


@dataclass
class GateConfig:
    name: str = MISSING
    confidence: float = 0.95
    tolerance: SuiteTolerance = field(default_factory=SuiteTolerance)
    # Per-task overrides of the tolerance, by lm-eval task name.
    per_task: dict[str, SuiteTolerance] = field(default_factory=dict)
    max_flip_rate: float | None = 0.10
    max_kl: float | None = 0.05
    # Minimum fraction saved in $/1M tokens vs base (None: no cost rule).
    min_cost_saving: float | None = None
    min_throughput_gain: float | None = None
    # Served runs: minimum per-item agreement between served and in-process scoring, per task and model.
    min_agreement: float | None = None
    # Rule names that decide the verdict; the others only warn.
    blocking: list[str] = field(default_factory=lambda: ["accuracy", "flip_rate", "kl"])
    inconclusive_blocks: bool = True
    # How the registry alias picks one champion among PROMOTEd variants (pipelines/champion.py).
    champion_policy: str = "cheapest"

    def __post_init__(self) -> None:
        _fraction("gate", "confidence", self.confidence)
        if self.champion_policy not in CHAMPION_POLICIES:
            raise ConfigError(f"gate.champion_policy={self.champion_policy} is unknown; "
                              f"choose from {', '.join(CHAMPION_POLICIES)}")
        for task, tol in {"tolerance": self.tolerance, **self.per_task}.items():
            where = "gate.tolerance" if task == "tolerance" else f"gate.per_task.{task}"
            if tol.kind not in {"absolute", "relative"}:
                raise ConfigError(f"{where}.kind={tol.kind} must be absolute or relative")
            _fraction(where, "max_drop", tol.max_drop, closed_low=True)
        # A flip rate or a cost saving above 1 can never be observed: such a bound silently passes everything.
        for name in ("max_flip_rate", "min_cost_saving"):
            if getattr(self, name) is not None:
                _fraction("gate", name, getattr(self, name), closed_low=True, closed_high=True)
        _at_least("gate", 0, max_kl=self.max_kl)
        if self.min_throughput_gain is not None and self.min_throughput_gain <= -1:
            raise ConfigError(f"gate.min_throughput_gain={self.min_throughput_gain} must be > -1 "
                              "(a gain of -1 is zero throughput)")
        if self.min_agreement is not None:
            _fraction("gate", "min_agreement", self.min_agreement, closed_low=True, closed_high=True)
        unknown = set(self.blocking) - {"accuracy", "flip_rate", "kl", "cost", "throughput", "agreement"}
        if unknown:
            raise ConfigError(f"gate.blocking has unknown rules {sorted(unknown)}; "
                              "choose from accuracy, flip_rate, kl, cost, throughput, agreement")


@dataclass
class TrackingConfig:
    """What every tracker shares. Each backend in registry.TRACKERS names its own schema
    (`config_schema`, a subclass holding its fields, e.g. MLflow's URI), registered as
    tracking/<backend>_schema; tracking=off uses this one."""

    name: str = MISSING
    enabled: bool = True
    # Tracker backend, a name in registry.TRACKERS.
    backend: str = "mlflow"


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    quant: QuantConfig = MISSING
    eval: EvalConfig = MISSING
    serve: ServeConfig = MISSING
    bench: BenchConfig = MISSING
    hardware: HardwareConfig = MISSING
    gate: GateConfig = MISSING
    tracking: TrackingConfig = MISSING
    # Where checkpoints, eval results and stage records are cached across runs and sweeps.
    cache_dir: str = ".cache/quantgate"
    overwrite: bool = False
    seed: int = 0
    # A human name for the sweep; groups child runs under one MLflow parent.
    sweep: str | None = None
    debug: bool = False
    # Print the plan (sizes, memory, GPUs, disk, items, time and cost) and stop: nothing is downloaded or run.
    plan: bool = False


GROUPS = {
    "model": ModelConfig, "quant": QuantConfig, "eval": EvalConfig, "serve": ServeConfig, "bench": BenchConfig,
    "hardware": HardwareConfig, "gate": GateConfig, "tracking": TrackingConfig,
}

# Groups whose backends bring their own schema (a subclass of the group's), so that a backend's
# fields are validated by that backend and a new backend never edits a shared schema.
BACKEND_GROUPS = {"serve": (SERVERS, "serve backend"), "tracking": (TRACKERS, "tracker")}


def register_schemas() -> None:
    """Put every schema in Hydra's ConfigStore; the YAMLs name theirs in their defaults list."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for group, schema in GROUPS.items():
        store.store(group=group, name=f"{group}_schema", node=schema)
    for group in BACKEND_GROUPS:  # e.g. conf/serve/vllm.yaml names /serve/vllm_schema@serve
        for backend, schema in backend_schemas(group).items():
            store.store(group=group, name=f"{backend}_schema", node=schema)
    # ${unique_id:} in hydra.run.dir / hydra.sweep.dir: two runs started in the same second get two
    # folders. Cached per config (like Hydra's ${now:}), and Hydra copies that cache to sweep jobs.
    OmegaConf.register_new_resolver("unique_id", lambda: secrets.token_hex(4), use_cache=True, replace=True)


def backend_schemas(group: str) -> dict[str, type]:
    """Each registered backend's own schema for `group` (the class's `config_schema`), by backend name."""
    registry, kind = BACKEND_GROUPS[group]
    return {name: resolve(registry, kind, name).config_schema for name in registry}


def group_choices(group: str) -> list[str]:
    """The config names of one group: conf/<group>/*.yaml (installed as pipelines.conf)."""
    directory = files("pipelines.conf") / group
    return sorted(entry.name.removesuffix(".yaml") for entry in directory.iterdir() if entry.name.endswith(".yaml"))


def load_group_config(group: str, name: str) -> Any:
    """conf/<group>/<name>.yaml outside a Hydra compose, validated against the group's schema."""
    node = OmegaConf.create((files("pipelines.conf") / group / f"{name}.yaml").read_text())
    node.pop("defaults", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GROUPS[group]), node))
