"""AutoGPTQ and AutoAWQ: named so a config using them gets a routed one-line error, not an ImportError.

Both projects are archived upstream and do not work with today's stack: auto-gptq 0.7.1 does not
import with transformers 5 and refuses to quantize without CUDA; autoawq 0.2.9 cannot load its own
output on CPU. `check_backend` (pipelines/quantize/compat.py) raises the same error at config time,
e.g. `python -m pipelines.run quant=gptq quant.backend=autogptq` exits 2 before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import QuantConfig
from pipelines.errors import ConfigError
from pipelines.models import BaseModel

LEGACY_BACKENDS = {
    "autogptq": "AutoGPTQ is end-of-life upstream and auto-gptq 0.7.1 neither imports with transformers 5 "
                "nor quantizes without CUDA",
    "autoawq": "AutoAWQ is end-of-life upstream and autoawq 0.2.9 cannot load its own output on CPU",
}


def legacy_backend_error(backend: str) -> ConfigError:
    return ConfigError(f"quant.backend={backend}: {LEGACY_BACKENDS[backend]}; use quant.backend=gptqmodel, their "
                       "maintained successor (pip install -e '.[gptqmodel]'), or quant.backend=llmcompressor")


class _RetiredQuantizer:
    """A registered name whose every use raises the routed error (check_backend raises it first)."""

    backend = ""
    libraries = ("transformers", "torch")

    @classmethod
    def check(cls, quant: QuantConfig) -> None:
        raise legacy_backend_error(cls.backend)

    @classmethod
    def check_compatible(cls, model_config: dict[str, Any], quant: QuantConfig) -> None:
        raise legacy_backend_error(cls.backend)

    def quantize(self, base: BaseModel, quant: QuantConfig, calibration: list[str], out_dir: Path,
                 seed: int) -> None:
        raise legacy_backend_error(self.backend)


class AutoGPTQQuantizer(_RetiredQuantizer):
    backend = "autogptq"


class AutoAWQQuantizer(_RetiredQuantizer):
    backend = "autoawq"
