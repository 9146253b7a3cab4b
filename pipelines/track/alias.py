"""The registry alias follows the champion (pipelines/champion.py), not the last PROMOTE.

Every PROMOTEd variant gets a registry version (pipelines/track/lineage.py) tagged with what the
champion policies rank by; once every variant of a command is judged, the lead process reads the
alias's current holder back from those tags (`holder`), chooses, and `crown` moves the alias once
and tags the champion's version with why. Exercised by `python -m pytest tests/test_track.py -k champion`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from pipelines.champion import describe
from pipelines.records import ChampionDecision, Contender

log = logging.getLogger(__name__)
Call = Callable[..., Any]
# Registry version tags: what the policies rank by, and why a version holds the alias.
COST_TAG, SIZE_TAG, DELTA_TAG = "quantgate.usd_per_1m_output_tokens", "quantgate.size_bytes", "quantgate.mean_delta"
SAVING_TAG = "quantgate.cost_saving_vs_base_low"
VARIANT_TAG, HASH_TAG = "quantgate.variant", "quantgate.content_hash"
CHAMPION_PREFIX = "quantgate.champion."


def contender_tags(contender: Contender) -> dict[str, str]:
    """The ranking facts of a version, as tags (absent when not measured)."""
    values = {COST_TAG: contender.usd_per_million_output_tokens, SIZE_TAG: contender.size_bytes,
              DELTA_TAG: contender.mean_delta, SAVING_TAG: contender.cost_saving_low}
    return {key: repr(value) for key, value in values.items() if value is not None}


def holder(client, name: str, alias: str, call: Call) -> Contender | None:
    """The version the alias points at now, as a contender (None: no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        version = call(client.get_model_version_by_alias, name, alias)
    except MlflowException:  # no registered model, or no alias yet
        return None
    tags = version.tags
    return Contender(variant=tags.get(VARIANT_TAG, f"version {version.version}"),
                     content_hash=tags.get(HASH_TAG, ""), usd_per_million_output_tokens=_number(tags.get(COST_TAG)),
                     size_bytes=_integer(tags.get(SIZE_TAG)), mean_delta=_number(tags.get(DELTA_TAG)),
                     version=str(version.version), cost_saving_low=_number(tags.get(SAVING_TAG)))


def crown(client, name: str, alias: str, decision: ChampionDecision, call: Call) -> str | None:
    """Move `alias` to the champion's newest version and tag it with the decision; return that version."""
    if decision.champion is None or decision.kept:
        log.info("registry alias '%s' of %s stays%s: %s", alias, name,
                 f" on version {decision.previous_holder.version}" if decision.kept else "", decision.reason)
        return decision.previous_holder.version if decision.kept else None
    champion = decision.ranking[0]
    versions = [v for v in call(client.search_model_versions, f"name='{name}'")
                if v.tags.get(HASH_TAG) == champion.content_hash]
    if not versions:
        raise RuntimeError(f"champion {champion.variant} has no registry version of {name} to move '{alias}' to")
    version = str(max(int(v.version) for v in versions))
    for key, value in decision_tags(decision).items():
        call(client.set_model_version_tag, name, version, key, value)
    call(client.set_registered_model_alias, name, alias, version)
    log.info("registry alias '%s' of %s -> version %s: %s", alias, name, version, decision.reason)
    return version


def decision_tags(decision: ChampionDecision) -> dict[str, str]:
    previous = decision.previous_holder
    return {f"{CHAMPION_PREFIX}policy": decision.policy,
            f"{CHAMPION_PREFIX}ranking": " > ".join(describe(c) for c in decision.ranking)[:5000],
            f"{CHAMPION_PREFIX}runner_up": decision.runner_up or "none",
            f"{CHAMPION_PREFIX}previous_holder": describe(previous) if previous else "none",
            f"{CHAMPION_PREFIX}reason": decision.reason[:5000]}


def _number(text: str | None) -> float | None:
    return float(text) if text else None


def _integer(text: str | None) -> int | None:
    return int(text) if text else None
