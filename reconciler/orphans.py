"""Orphans and renames (design.md "Orphans, renames, retries"), from records and manifests alone.

An **orphan** is a record whose model no manifest declares any more: `plan` and `status` list it,
nothing is deleted at the provider. A declared model without a record that points at the same
provider model (`ProviderType.model_identity`, at the same provider) as an orphan looks like a
rename: `plan` says so and prints `reconciler rename OLD NEW`.

Pure: no I/O, no clock; the engine passes the records it read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from reconciler.domain import DesiredModel, ModelRecord
from reconciler.providers.catalog import CATALOG, provider_type


def model_identity(model: DesiredModel) -> str:
    """Which provider model a declared model points at (`acme/hardhats`), as its type says."""
    return provider_type(model.provider_type).model_identity(model.model)


def record_identity(record: ModelRecord) -> str | None:
    """Which provider model a record is of; for records older than `provider_model`, read from the
    `model` block recorded with its training. None when neither tells (unknown type, bad data)."""
    if record.provider_model is not None:
        return record.provider_model
    snapshot = record.training
    ptype = CATALOG.get(str(snapshot.get("provider"))) if isinstance(snapshot, dict) else None
    if ptype is None:
        return None
    try:
        model = ptype.model_schema.model_validate(snapshot.get("model"))
    except ValidationError:
        return None
    return ptype.model_identity(model)


def same_provider_model(record: ModelRecord, model: DesiredModel) -> bool | None:
    """Whether a record is of the provider model `model` points at; None when the record cannot tell."""
    if record.provider != model.provider:
        return False
    identity = record_identity(record)
    return None if identity is None else identity == model_identity(model)


def _last(record: ModelRecord) -> datetime | None:
    return record.finished_at or record.triggered_at


def _recency(record: ModelRecord) -> tuple[datetime, str]:
    return (_last(record) or datetime.min.replace(tzinfo=UTC), record.name)


def rename_candidates(
    records: Mapping[str, ModelRecord],
    declared: Collection[str],
    models: Iterable[DesiredModel],
    recorded: Collection[str] | None = None,
) -> dict[str, str]:
    """New name -> orphan name, for each of `models` that has no record and points at the same
    provider model as an orphan (the most recently trained one when several do). `recorded`: every
    name with a record, when `records` holds only some of them (the orphans')."""
    has_record = records if recorded is None else recorded
    by_key: dict[tuple[str, str], list[ModelRecord]] = {}
    for name, record in records.items():
        if name in declared:
            continue
        identity = record_identity(record)
        if identity is not None:
            by_key.setdefault((record.provider, identity), []).append(record)
    if not by_key:
        return {}
    found: dict[str, str] = {}
    for m in models:
        if m.name in has_record:
            continue
        candidates = by_key.get((m.provider, model_identity(m)))
        if candidates:
            found[m.name] = max(candidates, key=_recency).name
    return found


def rename_command(old: str, new: str) -> str:
    return f"reconciler rename {old} {new}"


def forget_command(name: str) -> str:
    return f"reconciler forget {name}"


@dataclass(frozen=True)
class Orphan:
    """A record whose model no manifest declares."""

    name: str
    provider: str
    status: str  # the record's status: a `training` one may still run at the provider
    last_training: str | None  # when it ended (or was triggered), ISO 8601
    #: the declared model that looks like its new name, if any
    rename_to: str | None = None

    @property
    def command(self) -> str:
        """What to run: the rename when it looks like one, else how to drop the record."""
        return rename_command(self.name, self.rename_to) if self.rename_to else forget_command(self.name)

    def entry(self) -> dict[str, Any]:
        """One entry of plan JSON's `orphans` (and status JSON's)."""
        return {
            "name": self.name,
            "provider": self.provider,
            "last_training": self.last_training,
            "status": self.status,
            "rename_to": self.rename_to,
            "command": self.command,
        }


def find_orphans(
    records: Mapping[str, ModelRecord],
    declared: Mapping[str, DesiredModel],
    selected: Sequence[DesiredModel] | None = None,
    *,
    recorded: Collection[str] | None = None,
) -> list[Orphan]:
    """The orphans among `records`, by name, each with the declared model it looks renamed to.

    Orphans are found against every declared model, never only the selected ones: a plan filtered
    by --target/--selector calls no declared model an orphan. Filtered (`selected` given), it lists
    only the orphans that look like renames of a selected model: an orphan has no labels to match.
    `recorded`: every name with a record, when `records` holds only the orphans' records.
    """
    renamed_to = {old: new for new, old in rename_candidates(records, declared, declared.values(), recorded).items()}
    orphans = [
        Orphan(
            name=r.name,
            provider=r.provider,
            status=r.status.value,
            last_training=last.isoformat() if (last := _last(r)) else None,
            rename_to=renamed_to.get(r.name),
        )
        for r in sorted(records.values(), key=lambda r: r.name)
        if r.name not in declared
    ]
    if selected is not None:
        names = {m.name for m in selected}
        orphans = [o for o in orphans if o.rename_to in names]
    return orphans
