"""A new tracker or bench engine is one module, one config file and one registry line.

Each test double here is registered exactly as a real backend is: its module on the import path,
its YAML in a config folder Hydra searches (`hydra.searchpath=[...]`, as a user's own configs
are), and one entry in the registry dict. Then the pipeline's own entry points use it: preflight's
tracker check, a sweep's parent run and report, the bench stage with its cache key.

Exercised by: pytest tests/test_seams.py
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from pipelines import exit_codes, registry, sweep
from pipelines.cli import compose_all
from pipelines.errors import ConfigError, InputError
from pipelines.records import Outcome, Variant

EMBEDDED = Path(__file__).resolve().parents[1] / "pipelines" / "embedded" / "tiny-llama"

TRACKER_MODULE = '''
"""A tracker writing one JSON line per event to the file tracking.uri names."""
import json
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import TrackingConfig
from pipelines.errors import InputError


@dataclass
class JsonlTrackingConfig(TrackingConfig):
    uri: str = ""


class JsonlTracker:
    libraries = ()
    config_schema = JsonlTrackingConfig

    def __init__(self, tracking):
        self.path = Path(tracking.uri)

    @staticmethod
    def check(tracking):
        if not tracking.uri.endswith(".jsonl"):
            raise InputError(f"tracking.uri={tracking.uri}: the jsonl tracker writes a .jsonl file")

    @staticmethod
    def check_reachable(tracking):
        if not Path(tracking.uri).parent.is_dir():
            raise InputError(f"tracking.uri={tracking.uri}: its folder does not exist")

    def _write(self, **event):
        with self.path.open("a") as file:
            file.write(json.dumps(event) + "\\n")

    def start_sweep(self, name, config):
        self._write(event="start_sweep", name=name, quant=config["quant"]["name"])
        return "jsonl-parent"

    def log_outcome(self, outcome, config, parent_run_id=None, reference=False):
        self._write(event="log_outcome", variant=outcome.variant_name, parent=parent_run_id)
        return outcome.variant_name

    def log_sweep_report(self, parent_run_id, files, outcomes=None, champions=None):
        self._write(event="log_sweep_report", parent=parent_run_id, files=len(files),
                    variants=[outcome.variant_name for outcome in outcomes or []])

    def log_run_report(self, run_id, files):
        self._write(event="log_run_report", run=run_id, files=len(files))

    def alias_holder(self, model):
        return None

    def crown(self, decision):
        self._write(event="crown", champion=decision.champion)
'''

ENGINE_MODULE = '''
"""An in-process bench engine on a virtual clock: each decode step of a batch of B takes
step_ms * B milliseconds, prefill twice that. No model is loaded; the numbers are exact."""
from pipelines.bench.engines import RequestTiming


class ClockEngine:
    name = "clock"
    libraries = ("numpy",)
    runs_levels = False
    memory_kind = "none"

    @classmethod
    def check(cls, cfg):
        if cfg.bench.params.get("step_ms", 1.0) <= 0:
            from pipelines.errors import ConfigError

            raise ConfigError("bench.params.step_ms must be > 0")

    def __init__(self, checkpoint_dir, model, device="cpu", step_ms=1.0):
        self.step_s = step_ms / 1000
        self.now = 0.0

    def run_batch(self, prompts, output_tokens):
        submit, step = self.now, self.step_s * len(prompts)
        times = [submit + 2 * step + i * step for i in range(output_tokens)]
        self.now = times[-1]
        return [RequestTiming(submit_s=submit, token_times_s=list(times)) for _ in prompts]

    def reset_peak_memory(self):
        pass

    def peak_memory(self):
        return 0

    def device_name(self):
        return "virtual clock"
'''


def register(tmp_path: Path, monkeypatch, group: str, name: str, table: dict[str, str], module: str,
             class_name: str, yaml: str) -> str:
    """One module, one config file, one registry line; returns the hydra.searchpath override."""
    plugins, conf = tmp_path / "plugins", tmp_path / "conf"
    (plugins).mkdir(exist_ok=True)
    (plugins / f"{name}_backend.py").write_text(module)
    (conf / group).mkdir(parents=True, exist_ok=True)
    (conf / group / f"{name}.yaml").write_text(textwrap.dedent(yaml))
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setitem(table, name, f"{name}_backend:{class_name}")
    return f"hydra.searchpath=[file://{conf}]"


@pytest.fixture
def jsonl_tracker(tmp_path, monkeypatch):
    events = tmp_path / "events.jsonl"
    searchpath = register(tmp_path, monkeypatch, "tracking", "jsonl", registry.TRACKERS, TRACKER_MODULE,
                          "JsonlTracker", f"""\
        defaults:
          - jsonl_schema
        name: jsonl
        backend: jsonl
        uri: {events}
        """)
    # A sweep must not reach MLflow by any path: its tracker is the configured one.
    from pipelines.track.mlflow_tracker import MLflowTracker

    def no_mlflow(*args, **kwargs):
        raise AssertionError("a sweep with tracking=jsonl constructed MLflowTracker")

    monkeypatch.setattr(MLflowTracker, "__init__", no_mlflow)
    monkeypatch.chdir(tmp_path)
    for name in (sweep.SWEEP_DIR_ENV, sweep.PARENT_ENV):  # sweep.start sets them; undo after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return searchpath, events


def test_a_registered_tracker_runs_preflight_and_the_sweep_without_mlflow(jsonl_tracker, tmp_path):
    from pipelines.track import check_reachable

    searchpath, events = jsonl_tracker
    configs = compose_all(["-m", "quant=fp8,w8a8", "tracking=jsonl", "sweep=seams", f"cache_dir={tmp_path}/cache",
                           searchpath])
    assert [c.tracking.backend for c in configs] == ["jsonl", "jsonl"]
    check_reachable(configs[0].tracking)  # preflight's tracker call

    sweep.start(configs)
    for cfg in configs:  # what each job records (here: failed variants, so no model is needed)
        sweep.record(Outcome(variant_name=cfg.quant.name, model=cfg.model.name, error="stage failed",
                             output_dir=str(tmp_path / "out" / cfg.quant.name), exit_code=exit_codes.STAGE_FAILED))
    exit_code = sweep.finish(configs)

    logged = [json.loads(line) for line in events.read_text().splitlines()]
    assert logged[0] == {"event": "start_sweep", "name": "seams", "quant": "fp8"}
    assert logged[-2] == {"event": "crown", "champion": None}  # every variant failed: no champion
    assert logged[-1]["event"] == "log_sweep_report" and logged[-1]["parent"] == "jsonl-parent"
    assert logged[-1]["variants"] == ["fp8", "w8a8"] and logged[-1]["files"] >= 1
    assert exit_code == exit_codes.STAGE_FAILED
    assert not (tmp_path / "mlruns").exists()


def test_a_registered_trackers_own_checks_are_preflight_errors(jsonl_tracker, tmp_path):
    from pipelines.track import check_reachable

    searchpath, _ = jsonl_tracker
    wrong_suffix = compose_all(["tracking=jsonl", f"tracking.uri={tmp_path}/events.txt", searchpath])[0]
    with pytest.raises(InputError, match="writes a .jsonl file"):
        check_reachable(wrong_suffix.tracking)
    missing_folder = compose_all(["tracking=jsonl", f"tracking.uri={tmp_path}/nowhere/e.jsonl", searchpath])[0]
    with pytest.raises(InputError, match="folder does not exist"):
        check_reachable(missing_folder.tracking)


def test_a_registered_trackers_schema_holds_its_fields_and_no_other_trackers(jsonl_tracker, tmp_path):
    searchpath, events = jsonl_tracker
    (cfg,) = compose_all(["tracking=jsonl", searchpath])
    assert type(cfg.tracking).__name__ == "JsonlTrackingConfig" and cfg.tracking.uri == str(events)
    with pytest.raises(ConfigError, match="tracking.experiment is a field of the mlflow tracking backend"):
        compose_all(["tracking=jsonl", "tracking.experiment=x", searchpath])


@pytest.fixture
def clock_engine(tmp_path, monkeypatch):
    return register(tmp_path, monkeypatch, "bench", "clock", registry.BENCH_ENGINES, ENGINE_MODULE,
                    "ClockEngine", """\
        defaults:
          - bench_schema
        name: clock
        engine: clock
        input_tokens: 8
        output_tokens: 4
        batch_sizes: [1, 4, 16]
        requests_per_level: 16
        warmup_requests: 0
        repeats: 2
        slo:
          ttft_p95_ms: 1000
          itl_p95_ms: 5
        params:
          step_ms: 1.0
        """)


def embedded_variant() -> Variant:
    return Variant(name="none", base="tiny-llama", backend="none", method="none", scheme=None,
                   checkpoint_dir=str(EMBEDDED), size_bytes=1, content_hash="embedded-base", cache_key="k",
                   quantize_seconds=0.0, from_cache=False, versions={})


@pytest.mark.slow  # loads the embedded tokenizer (transformers, torch)
def test_a_registered_bench_engine_is_checked_run_and_keyed_by_its_libraries(clock_engine, tmp_path):
    from pipelines.bench import check_bench, run_benchmark
    from pipelines.storage import library_versions

    cfg = compose_all(["bench=clock", f"cache_dir={tmp_path}/cache", clock_engine])[0]
    check_bench(cfg)  # preflight's bench call: engine name, params against its signature, its own check
    result = run_benchmark(cfg, embedded_variant())

    assert result.engine == "clock" and [level.batch_size for level in result.levels] == [1, 4, 16]
    # Virtual clock: one decode step of a batch of B takes B ms, so B=1 and B=4 meet ITL p95 <= 5 ms.
    assert [level.itl_ms.p95 for level in result.levels] == pytest.approx([1.0, 4.0, 16.0])
    assert result.knee_batch_size == 4
    assert result.versions == {"numpy": library_versions("numpy")["numpy"], "device_name": "virtual clock"}
    assert run_benchmark(cfg, embedded_variant()).from_cache  # same engine, libraries, config: cached


@pytest.mark.parametrize("override, message", [
    ("+bench.params.step_seconds=1", r"bench.params \['step_seconds'\] are not options of the clock engine"),
    ("bench.params.step_ms=0", "step_ms must be > 0"),
])
def test_a_registered_bench_engines_params_and_check_fail_in_preflight(clock_engine, tmp_path, override, message):
    from pipelines.bench import check_bench

    cfg = compose_all(["bench=clock", override, clock_engine])[0]
    with pytest.raises(ConfigError, match=message):
        check_bench(cfg)
