"""`reconciler rename`, `forget` and `retry`: the state edited by hand (design.md "Orphans, renames,
retries"), and the orphans `plan` and `status` list. Nothing is sent to a provider.

Each reads the record, checks that the edit makes sense against the manifests, then writes by
compare-and-set on the version it read (`save_if`, `delete_if`, `move_if`), with a history event
in the same transaction. A refusal, or a race lost to another writer, raises `RefusedError`
saying why and what to do; then nothing was written. Of two `rename`s at once, one wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.domain import DesiredModel, HistoryEvent, ModelRecord, RecordStatus
from reconciler.errors import RefusedError
from reconciler.orphans import (
    Orphan,
    find_orphans,
    forget_command,
    model_identity,
    record_identity,
    same_provider_model,
)
from reconciler.state.base import StateStore

#: up to this many orphans, their records are read one by one (else every record at once)
FEW_ORPHANS = 32

#: what `reconciler status` and `plan` show of records no manifest declares
LOOK = "`reconciler status` lists the models and the recorded ones no manifest declares"


@dataclass
class Edited:
    """What a command did: the record now stored (or, for `forget`, the one dropped)."""

    record: ModelRecord
    #: the record as it was before (`retry`)
    before: ModelRecord | None = None
    #: `rename`: how many history events came along
    moved_events: int = 0
    #: something the operator should know (a training that may still run at the provider)
    warning: str = ""


async def read_orphans(
    state: StateStore, declared: Mapping[str, DesiredModel], selected: Sequence[DesiredModel] | None = None
) -> list[Orphan]:
    """The orphans as `find_orphans` lists them, reading every record's name and the orphans'
    records only: never all 10,000 records again after a plan (a tenth of a second or more).
    Many orphans are read at once instead of one by one."""
    names = await state.names()
    orphaned = sorted(names - declared.keys())
    if len(orphaned) > FEW_ORPHANS:
        records = {n: r for n, r in (await state.all()).items() if n not in declared}
    else:
        records = {n: r for n in orphaned if (r := await state.get(n)) is not None}
    return find_orphans(records, declared, selected, recorded=names)


def _where(model: DesiredModel) -> str:
    return f"declared at {model.source}"


def _event(record: ModelRecord, event: str, reason: str, git_commit: str | None, **detail: Any) -> HistoryEvent:
    return HistoryEvent(record.name, event, reason, record.fingerprint, detail, git_commit)


def _running(record: ModelRecord) -> str:
    if record.status in (RecordStatus.INTENT, RecordStatus.TRAINING):
        return (
            f"its last training is recorded as {record.status.value}: it may still run at {record.provider}; "
            "nothing is stopped or deleted there"
        )
    return ""


async def rename(
    state: StateStore, declared: Mapping[str, DesiredModel], old: str, new: str, *, git_commit: str | None = None
) -> Edited:
    """Move `old`'s record and history to `new` (as `terraform state mv`): `old` must have a record
    and no manifest; `new` must be declared, of the same provider model, and have no record."""
    if old == new:
        raise RefusedError(f"cannot rename {old} to itself")
    record = await state.get(old)
    if record is None:
        raise RefusedError(f"cannot rename {old}: the state has no record of it; {LOOK}")
    if old in declared:
        raise RefusedError(
            f"cannot rename {old}: it is still {_where(declared[old])}; rename it in its manifest "
            f"(metadata.name: {new}) first, then run this again"
        )
    target = declared.get(new)
    if target is None:
        raise RefusedError(
            f"cannot rename {old} to {new}: no manifest declares {new}; declare it first (a record is "
            "only moved to a declared model, so a mistyped name cannot make another orphan)"
        )
    existing = await state.get(new)
    if existing is not None:
        raise RefusedError(
            f"cannot rename {old} to {new}: {new} already has a record ({existing.status.value}); a record "
            "is only moved to a name without one"
        )
    if same_provider_model(record, target) is False:
        raise RefusedError(
            f"cannot rename {old} to {new}: {old}'s record is of {record.provider} model "
            f"{record_identity(record) or '(unknown)'}, while {new} points at {target.provider} model "
            f"{model_identity(target)}; not the same model, so not a rename ({forget_command(old)} drops the record)"
        )
    history = await state.history(old)
    moved = dataclasses.replace(record, name=new, provider_model=record.provider_model or model_identity(target))
    detail = {"from": old, "to": new, "message": f"renamed from {old} to {new} by `reconciler rename`"}
    events = [
        *(
            HistoryEvent(new, e.event, e.reason, e.fingerprint, {**e.detail, "renamed_from": old}, e.git_commit, e.at)
            for e in history
        ),
        _event(record, "renamed", "renamed-by-hand", git_commit, **detail),
        _event(moved, "renamed", "renamed-by-hand", git_commit, **detail),
    ]
    if not await state.move_if(old, record.version, moved, *events):
        raise RefusedError(await _lost_rename(state, old, new))
    return Edited(moved, moved_events=len(history), warning=_running(moved))


async def _lost_rename(state: StateStore, old: str, new: str) -> str:
    """What another writer did first, said after the compare-and-set lost."""
    now_new, now_old = await state.get(new), await state.get(old)
    if now_new is not None:
        what = f"{new} got a record meanwhile (another rename, or an apply)"
    elif now_old is None:
        what = f"{old}'s record was removed meanwhile (another rename, or a forget)"
    else:
        what = f"{old}'s record changed meanwhile"
    return f"cannot rename {old} to {new}: {what}; nothing was moved; {LOOK}, then run it again if still needed"


async def forget(
    state: StateStore, declared: Mapping[str, DesiredModel], name: str, *, git_commit: str | None = None
) -> Edited:
    """Drop the record of an orphan (its history stays); refused for a declared model."""
    if name in declared:
        raise RefusedError(
            f"cannot forget {name}: it is still {_where(declared[name])}; forget drops only the record of a "
            "model no manifest declares (the record is what tells apply it is trained): remove it from the "
            "manifests first (nothing is deleted at the provider either way)"
        )
    record = await state.get(name)
    if record is None:
        raise RefusedError(f"cannot forget {name}: the state has no record of it; {LOOK}")
    ev = _event(
        record,
        "forgotten",
        "forgotten-by-hand",
        git_commit,
        message=f"record dropped by `reconciler forget` (it was {record.status.value})",
        status=record.status.value,
        provider=record.provider,
        provider_model=record_identity(record),
        handle=record.handle,
    )
    if not await state.delete_if(name, record.version, ev):
        raise RefusedError(
            f"cannot forget {name}: another writer changed its record meanwhile; nothing was dropped; {LOOK}, "
            "then run it again if still needed"
        )
    return Edited(record, warning=_running(record))


async def retry(
    state: StateStore, declared: Mapping[str, DesiredModel], name: str, *, git_commit: str | None = None
) -> Edited:
    """Re-arm a model whose retries are exhausted: its failed attempts reset to 0, so the next plan
    retries it. Refused when nothing is exhausted (the plan retries or trains it anyway)."""
    model = declared.get(name)
    if model is None:
        raise RefusedError(f"cannot retry {name}: no manifest declares it, so nothing would train it")
    record = await state.get(name)
    if record is None:
        raise RefusedError(
            f"cannot retry {name}: the state has no record of it; `reconciler plan` shows what apply does"
        )
    policy = model.policy
    if record.status is not RecordStatus.FAILED:
        problem = f"its last training is {record.status.value}, not failed"
    elif record.fingerprint != model.fingerprint:
        problem = "its spec changed since the failed training, so the next apply trains the new spec anyway"
    elif record.attempts <= policy.max_retries:
        after = f" after {record.next_attempt_at.isoformat()}" if record.next_attempt_at else ""
        problem = (
            f"its retries are not exhausted ({record.attempts} failed attempts, policy.max_retries is "
            f"{policy.max_retries}): the next apply retries it{after}"
        )
    else:
        problem = ""
    if problem:
        raise RefusedError(f"cannot retry {name}: {problem}; retry re-arms only a model whose retries are exhausted")
    armed = dataclasses.replace(record, attempts=0, next_attempt_at=None)
    ev = _event(
        record,
        "rearmed",
        "retry-by-hand",
        git_commit,
        message=f"retries re-armed by `reconciler retry` after {record.attempts} failed attempts",
        attempts=record.attempts,
        max_retries=policy.max_retries,
    )
    if not await state.save_if(armed, record.version, ev):
        raise RefusedError(
            f"cannot retry {name}: another writer changed its record meanwhile; nothing was changed; "
            "`reconciler plan` shows where it stands"
        )
    return Edited(armed, before=record)
