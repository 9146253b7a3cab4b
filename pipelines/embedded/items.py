"""The eval-item record shared by the embedded domain generators.

Exercised by: python -m pipelines.embedded.data --out /tmp/qg-data
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class EvalItem:
    """One held-out question: the prompt, its gold answer, and (for multiple choice) the options
    or (for a worked generation task) the full worked solution that ends in the answer."""

    id: str
    query: str
    answer: str
    choices: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)
    worked: str = ""

    def full_text(self) -> str:
        """The item rendered exactly as a training record would be (prompt, solution, period)."""
        return f"{self.query} {self.worked or self.answer}."

    def to_row(self) -> dict:
        row = asdict(self)
        if self.choices:
            row["choices"] = list(self.choices)
            row["label"] = self.choices.index(self.answer)
        else:
            del row["choices"]
        if not self.worked:
            del row["worked"]
        return row
