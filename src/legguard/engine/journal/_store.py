"""The audit journal: an append-only, hash-chained SQLite log written BEFORE every effect it describes.

Every row carries the hash of the row before it, so `legguard audit verify` detects an edited, deleted or
inserted row as long as nobody re-chained the rows after it; the `packages` table is the queryable current
view (state + exposure) that the replayer cross-checks against the journal. The chain's head is kept in this
same file, so the chain alone does NOT hold against someone who can write the file: they can drop the newest
rows, or delete one in the middle and re-chain everything after it, and rewrite `meta.head` and the packages
table. Against that, the head is anchored outside the journal: signed checkpoints in a separate file
(`_anchors.py`, `audit verify --anchors`), which protect every row up to the last anchor (docs/audit.md).
"""

from __future__ import annotations

import enum
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar, cast

from legguard.fsm._core import Exposure, LegPlan, PackagePlan
from legguard.fsm._events import (
    CancelOrder,
    Command,
    Event,
    ExecutionStyle,
    JournalIntent,
    LegRole,
    OrderEvent,
    OrderIntent,
    QueryOrder,
    SendOrder,
    Transitioned,
    event_from_dict,
)
from legguard.fsm._table import TERMINAL_STATES, State

SCHEMA_VERSION: Final = 1
# Package numbers reserved per fsync'd commit (see `Journal.next_package_number`): a restart skips what is
# left of its block. 1,024: the fsync (~3.5 ms here) costs a package ~3 µs, not ~110 µs as with blocks of 32
# (and one `submit` in 32 stalled for it); six-digit numbers last ~970 restarts, and a seventh digit still
# fits every client id Binance accepts.
NUMBER_BLOCK: Final = 1024

_T = TypeVar("_T")

# --- row kinds ----------------------------------------------------------------------------------------

PACKAGE_CREATED: Final = "package_created"
EVENT: Final = "event"
TRANSITION: Final = "transition"
INTENT: Final = "intent"
CANCEL: Final = "cancel"
QUERY: Final = "query"
# An audited fact, not replayed: a cancel armed to leave the moment the answer to an order still travelling
# says it rests or refuses it (`PackageCore.cancels_on_answer`), written before that cancel can leave.
CANCEL_ARMED: Final = "cancel_armed"

# Rows the replayer re-derives from the decision core: only the typed helpers may write them, so that
# what is journaled is exactly what the core decided.
REPLAYED_KINDS: Final = frozenset({PACKAGE_CREATED, EVENT, TRANSITION, INTENT, CANCEL, QUERY})
# Everything else is an audited fact, not replayed: per package e.g. `ack`, `order_error`, `fault`,
# `recovery`, `unwind_overdue`, `note`; engine-wide (package_id NULL) e.g. `engine` rows whose payload says
# started / stopped / halted / resumed and why. The set stays open so the engine can add facts without a
# journal change; only the spelling is enforced, so a kind is always greppable.
FACT_KIND_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

_BASE36: Final = string.digits + string.ascii_lowercase
_JOURNAL_ID_RE: Final = re.compile(r"^[0-9a-z]{4}$")
# Credential-looking keys, compared after lower-casing and dropping '-', '_' and spaces.
_SECRET_KEY_RE: Final = re.compile(r"apikey|secret|password|passwd|passphrase|privatekey")


class Durability(enum.Enum):
    """How much a committed row survives."""

    PROCESS = "process"  # WAL + synchronous=NORMAL: survives a crash of the process, not of the machine
    POWER = "power"  # WAL + synchronous=FULL: fsync on every commit, survives power loss


_SYNCHRONOUS: Final = {Durability.PROCESS: 1, Durability.POWER: 2}  # PRAGMA synchronous values


# --- errors -------------------------------------------------------------------------------------------


class JournalError(Exception):
    """Base class of every journal problem."""


class JournalNotFound(JournalError, FileNotFoundError):
    """A journal was opened for reading but no file exists at that path."""


class NotAJournal(JournalError):
    """The file exists but is not a legguard journal (or has an unsupported schema version)."""


class SecretInPayload(JournalError, ValueError):
    """A payload key looks like a credential; the journal never stores secrets."""


class InvalidKind(JournalError, ValueError):
    """`record()` was given a kind it may not write."""


class UnknownPackage(JournalError, KeyError):
    """A row refers to a package that was never created in this journal."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicatePackage(JournalError, ValueError):
    """`package_created` for a package id that already exists."""


class JournalLocked(JournalError):
    """Another process (or another `Journal` in this one) holds the journal open for writing."""


class _WriterLock:
    """One writer per journal: an exclusive `flock` on `<db>.lock`, holding the writer's pid. The kernel drops
    it when the process dies, so a crashed writer never blocks its own recovery. `flock` locks belong to the
    open file, so a second `Journal.open` in the same process is refused too."""

    def __init__(self, path: Path) -> None:
        self.path = Path(f"{path}.lock")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open journal {str(path)!r}: lock file: {exc.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder()
            os.close(self._fd)
            raise JournalLocked(
                f"journal {str(path)!r} is already open for writing by pid {holder} (lock {str(self.path)!r}): "
                f"one writer per journal; stop that process first (`legguard audit` can read meanwhile)"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def _holder(self) -> str:
        try:
            text = os.pread(self._fd, 32, 0).decode(errors="replace").strip()
        except OSError:
            text = ""
        return text if text.isdigit() else "unknown"

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the lock; the file stays (harmless)
            self._fd = -1


# --- canonical encoding -------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    # The value itself is not echoed: it could be a credentials object.
    raise TypeError(f"journal payload value of type {type(value).__name__} is not JSON-serialisable")


_ENCODER: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_json_default
)


_json_str: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii


def canonical_json(obj: Any) -> str:
    """The one JSON spelling of `obj`: sorted keys, compact separators, ASCII, no NaN."""
    return _ENCODER.encode(obj)


# The rows every core step writes, spelled out: `canonical_json(x.to_dict())` builds a dict and a fresh C
# encoder per row (~8-15 µs); these build the same text directly from the objects (~1-3 µs). Any value of an
# unexpected type takes the generic path, so the text is always exactly canonical_json's (a test pins both
# spellings to the same bytes, so old journals verify unchanged).


_ENUM_JSON: dict[object, str] = {}


def _q_enum(value: object) -> str | None:
    """A str-valued enum member as canonical JSON (its value, quoted), cached per member; None otherwise."""
    try:
        return _ENUM_JSON[value]
    except (KeyError, TypeError):
        pass
    if isinstance(value, enum.Enum) and type(value.value) is str:
        _ENUM_JSON[value] = text = _json_str(value.value)
        return text
    return None


def _q_dec(value: object) -> str | None:
    """A Decimal field as canonical JSON (its str, quoted); None when the value is not a Decimal."""
    return _json_str(str(value)) if type(value) is Decimal else None


def _q_opt_dec(value: object) -> str | None:
    return "null" if value is None else _q_dec(value)


def _order_event_text(event: OrderEvent) -> str | None:
    reason = "null" if event.reason is None else _q_enum(event.reason)
    status = _q_enum(event.status)
    cid = event.client_order_id
    average, fee_base, fee_quote, filled = (
        _q_opt_dec(event.average), _q_dec(event.fee_base), _q_dec(event.fee_quote), _q_dec(event.filled),
    )  # fmt: skip
    if (
        reason is None or status is None or average is None or fee_base is None or fee_quote is None
        or filled is None or type(cid) is not str
    ):  # fmt: skip
        return None
    return (
        f'{{"average":{average},"client_order_id":{_json_str(cid)},"fee_base":{fee_base},"fee_quote":{fee_quote},'
        f'"filled":{filled},"kind":"order","reason":{reason},"status":{status}}}'
    )


def event_text(event: Event) -> str:
    """`canonical_json(event.to_dict())`, the journal's `event` row payload."""
    if type(event) is OrderEvent:
        text = _order_event_text(event)
        if text is not None:
            return text
    return canonical_json(event.to_dict())


# A package's plan, the `package_created` row's larger half: spelled directly (~3 µs, against ~25 µs for
# `to_dict` and the encoder), each leg's text cached by identity: a burst of packages shares its leg plans
# (`Engine.submit`), so a leg is spelled once per pair of books. The cache holds the leg itself (an id is
# only unique while its object lives) and is bounded.
_LEG_TEXT: dict[int, tuple[LegPlan, str]] = {}
_LEG_TEXT_MAX: Final = 256


def _leg_text(leg: LegPlan) -> str | None:
    held = _LEG_TEXT.get(id(leg))
    if held is not None and held[0] is leg:
        return held[1]
    price, step, dust, side = _q_dec(leg.price), _q_dec(leg.step), _q_dec(leg.dust), _q_enum(leg.side)
    minimum, amount, fee = _q_opt_dec(leg.min_order), _q_opt_dec(leg.amount), _q_dec(leg.fee_rate)
    if (
        price is None or step is None or dust is None or side is None or minimum is None or amount is None
        or fee is None or type(leg.symbol) is not str
    ):  # fmt: skip
        return None
    # `PackagePlan.to_dict`'s leg, keys sorted: amount, dust, fee_rate, min_order, price, side, step, symbol
    # (amount and min_order only when set, fee_rate only when not zero).
    text = "".join((
        "{", "" if leg.amount is None else f'"amount":{amount},', f'"dust":{dust},',
        f'"fee_rate":{fee},' if leg.fee_rate else "", "" if leg.min_order is None else f'"min_order":{minimum},',
        f'"price":{price},"side":{side},"step":{step},"symbol":{_json_str(leg.symbol)}}}',
    ))  # fmt: skip
    if len(_LEG_TEXT) >= _LEG_TEXT_MAX:
        _LEG_TEXT.clear()
    _LEG_TEXT[id(leg)] = (leg, text)
    return text


def plan_text(plan: PackagePlan) -> str:
    """`canonical_json(plan.to_dict())`, spelled directly (the generic path for anything unexpected)."""
    spot, perp, quantity = _leg_text(plan.spot), _leg_text(plan.perp), _q_dec(plan.quantity)
    policy, style, maker = _q_enum(plan.policy), _q_enum(plan.style), _q_enum(plan.maker)
    sweep = _q_dec(plan.sweep)
    if (
        spot is None or perp is None or quantity is None or policy is None or style is None or maker is None
        or sweep is None or type(plan.package_id) is not str or type(plan.client_id_prefix) is not str
    ):  # fmt: skip
        return canonical_json(plan.to_dict())
    # Keys sorted: client_id_prefix, maker, package_id, perp, policy, quantity, spot, style, sweep (maker and
    # style only off the default style, sweep only when not zero), as `to_dict` writes them.
    styled = plan.style is not ExecutionStyle.MAKER_MAKER
    return "".join((
        f'{{"client_id_prefix":{_json_str(plan.client_id_prefix)},', f'"maker":{maker},' if styled else "",
        f'"package_id":{_json_str(plan.package_id)},"perp":{perp},"policy":{policy},"quantity":{quantity},',
        f'"spot":{spot}', f',"style":{style}' if styled else "", f',"sweep":{sweep}' if plan.sweep else "", "}",
    ))  # fmt: skip


def _flag(value: object) -> str | None:
    return "true" if value is True else "false" if value is False else None


def _intent_text(i: OrderIntent) -> str | None:
    amount, price = _q_dec(i.amount), _q_opt_dec(i.price)
    ioc, post_only, reduce_only = _flag(i.ioc), _flag(i.post_only), _flag(i.reduce_only)
    purpose, role, side, type_ = _q_enum(i.purpose), _q_enum(i.role), _q_enum(i.side), _q_enum(i.type)
    if (
        amount is None or price is None or ioc is None or post_only is None or reduce_only is None
        or purpose is None or role is None or side is None or type_ is None
        or type(i.attempt) is not int or type(i.client_order_id) is not str or type(i.symbol) is not str
    ):  # fmt: skip
        return None
    return (
        f'{{"amount":{amount},"attempt":{int.__repr__(i.attempt)},"client_order_id":{_json_str(i.client_order_id)},'
        f'"ioc":{ioc},"post_only":{post_only},"price":{price},"purpose":{purpose},"reduce_only":{reduce_only},'
        f'"role":{role},"side":{side},"symbol":{_json_str(i.symbol)},"type":{type_}}}'
    )


def command_text(command: Command) -> tuple[str, str] | None:
    """The journal row (kind, canonical payload text) for a command: `command_row` encoded, directly."""
    if type(command) is Transitioned:
        dest, source, trigger = _q_enum(command.dest), _q_enum(command.source), _q_enum(command.trigger)
        if type(command.reason) is str and dest is not None and source is not None and trigger is not None:
            return TRANSITION, (
                f'{{"dest":{dest},"reason":{_json_str(command.reason)},"source":{source},"trigger":{trigger}}}'
            )
    elif type(command) is JournalIntent:
        text = _intent_text(command.intent)
        if text is not None:
            return INTENT, text
    elif type(command) is SendOrder:
        return None
    elif type(command) is CancelOrder or type(command) is QueryOrder:
        # The kill switch's first row: spelled directly, not a dict and a fresh encoder (~10-20 µs in the run
        # between the decisive answer and the cancel). `ensure_ascii` escaping applies to both fields alike.
        cid, symbol = command.client_order_id, command.symbol
        if type(cid) is str and type(symbol) is str:
            kind = CANCEL if type(command) is CancelOrder else QUERY
            return kind, f'{{"client_order_id":{_json_str(cid)},"symbol":{_json_str(symbol)}}}'
    row = command_row(command)
    return None if row is None else (row[0], canonical_json(row[1]))


def genesis_hash(journal_id: str) -> str:
    """prev_hash of row 1: binds the chain to this journal, so rows spliced from another one are caught."""
    return hashlib.sha256(f"legguard-journal:{journal_id}".encode()).hexdigest()


def row_hash(
    prev_hash: str,
    seq: int,
    kind: str,
    package_id: str | None,
    payload: str,
    wall_time: float,
    mono_time: float,
) -> str:
    """sha256(prev_hash || canonical(seq, kind, package_id, payload text, wall_time, mono_time)).

    Spelled out instead of `canonical_json([...])` because it runs for every row written and verified;
    a test holds the two spellings equal."""
    pid = "null" if package_id is None else _json_str(package_id)
    # float.__repr__ is what json writes for a finite float; int() refuses a bool/float seq sneaking in.
    # One f-string for prev_hash and body: no intermediate concatenation.
    text = (
        f"{prev_hash}[{int(seq)},{_json_str(kind)},{pid},{_json_str(payload)},{_float(wall_time)},{_float(mono_time)}]"
    )
    return _sha256(text.encode()).hexdigest()


_sha256: Final = hashlib.sha256
_float_repr: Final = float.__repr__


def _finite(value: float) -> float:
    """Times are checked before anything is written (a NaN would otherwise fail mid-batch)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"journal time {value!r} is not a finite number")
    return value


_NOT_FINITE: Final = frozenset({"nan", "inf", "-inf"})


def _float(value: float) -> str:
    # Two per row written and verified: one repr, then a set look-up instead of math.isfinite.
    text = float.__repr__(value if type(value) is float else float(value))
    if text in _NOT_FINITE:
        raise ValueError(f"journal time {value!r} is not a finite number")
    return text


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY_RE.search(re.sub(r"[-_ ]", "", key.lower())) is not None


_LEAVES: Final = frozenset({str, int, float, bool, type(None), Decimal})


def check_no_secrets(payload: Any, where: str = "payload") -> None:
    """Refuse any mapping key (at any depth) named like a credential. Values are never echoed."""
    if isinstance(payload, Mapping):
        for key, value in payload.items():
            if isinstance(key, str) and _is_secret_key(key):
                raise SecretInPayload(
                    f"{where}.{key}: key looks like a credential; the journal never stores secrets "
                    f"(drop the key before journaling)"
                )
            if type(value) not in _LEAVES:  # the common case costs one set lookup
                check_no_secrets(value, f"{where}.{key}")
    elif isinstance(payload, list | tuple):
        for i, value in enumerate(payload):
            if type(value) not in _LEAVES:
                check_no_secrets(value, f"{where}[{i}]")


# Free-form facts (`ack`, `order_error`, engine rows) are mostly flat dicts of strings, numbers and None, of a
# few shapes: their canonical text is spelled here directly. A shape (the keys, in the payload's order) is
# checked by the secret guard and sorted once, then cached with each key's JSON spelling: ~1 µs a fact
# instead of ~3 µs for guard + encoder. Anything else (nesting, a value of another type, a non-str key, a
# credential-looking key) takes the generic path, so the text is always canonical_json's.
_SHAPES: dict[tuple[Any, ...], tuple[tuple[str, str], ...] | None] = {}
_SHAPES_MAX: Final = 1024  # free-form keys could be unbounded: the cache must not be


def _shape(keys: tuple[Any, ...]) -> tuple[tuple[str, str], ...] | None:
    """(key, its JSON spelling and ':') in canonical order, or None if the generic path must handle it."""
    if any(type(key) is not str for key in keys):
        return None
    if any(_is_secret_key(key) for key in keys):
        return None  # check_no_secrets names it
    shape = tuple((key, _json_str(key) + ":") for key in sorted(keys))
    if len(_SHAPES) >= _SHAPES_MAX:
        _SHAPES.clear()
    _SHAPES[keys] = shape
    return shape


def _flat_text(payload: dict[Any, Any]) -> str | None:
    """A flat dict's canonical text, None if any key or value needs the generic path (or the guard)."""
    keys = tuple(payload)
    shape = _SHAPES.get(keys) or _shape(keys)
    if shape is None:
        return None
    parts: list[str] = []
    for key, key_text in shape:
        value = payload[key]
        kind = type(value)
        if kind is str:
            parts.append(key_text + _json_str(value))
        elif value is None:
            parts.append(key_text + "null")
        elif value is True:
            parts.append(key_text + "true")
        elif value is False:
            parts.append(key_text + "false")
        elif kind is int:
            parts.append(key_text + int.__repr__(value))
        elif kind is Decimal:
            parts.append(key_text + _json_str(str(value)))
        else:
            return None
    return "{" + ",".join(parts) + "}"


def fact_text(payload: Mapping[str, Any]) -> str:
    """`check_no_secrets(payload)` then `canonical_json(payload)`: the payload text of a free-form fact."""
    if type(payload) is dict:
        text = _flat_text(payload)
        if text is not None:
            return text
    check_no_secrets(payload)
    return canonical_json(payload)


def created_text(plan: Mapping[str, Any] | PackagePlan, spec: Mapping[str, Any]) -> tuple[str, str]:
    """(the `package_created` row's payload text, the plan's text for the packages table), for the payload
    `{"plan": plan, "spec": spec}` (a plan given as the object is spelled by `plan_text`). The plan is encoded
    once: the payload's text is canonical_json's, assembled ("plan" sorts before "spec", and a nested value
    is spelled as alone). Only the spec is free-form: the plan's keys are `PackagePlan.to_dict`'s own, so the
    secret guard reads the spec alone."""
    text = plan_text(plan) if isinstance(plan, PackagePlan) else canonical_json(plan)
    # A flat spec (the engine's: strings and None) is spelled by its cached shape, guard included.
    spec_text = _flat_text(spec) if type(spec) is dict else None
    if spec_text is None:
        spec = dict(spec)
        check_no_secrets(spec, "payload.spec")
        spec_text = canonical_json(spec)
    return f'{{"plan":{text},"spec":{spec_text}}}', text


def command_row(command: Command) -> tuple[str, dict[str, Any]] | None:
    """The journal row (kind, payload) for a command, or None for SendOrder: the effect itself is not a
    row, its write-ahead `intent` row is. The replayer uses this same function, so both sides agree."""
    match command:
        case Transitioned(source=source, trigger=trigger, dest=dest, reason=reason):
            return TRANSITION, {"source": source.value, "trigger": trigger.value, "dest": dest.value,
                                "reason": reason}  # fmt: skip
        case JournalIntent(intent=intent):
            return INTENT, intent.to_dict()
        case SendOrder():
            return None
        case CancelOrder(client_order_id=cid, symbol=symbol):
            return CANCEL, {"client_order_id": cid, "symbol": symbol}
        case QueryOrder(client_order_id=cid, symbol=symbol):
            return QUERY, {"client_order_id": cid, "symbol": symbol}
    raise TypeError(f"journal: unknown command type {type(command).__name__}: {command!r}")


def transition_text(payload: Mapping[str, Any]) -> str:
    """How the packages table spells a package's last transition."""
    return f"{payload['source']}->{payload['dest']} ({payload['trigger']})"


def summarize(kind: str, payload: Mapping[str, Any]) -> str:
    """One readable line for a row's payload (audit show, verify messages)."""
    p = payload
    try:
        match kind:
            case "package_created":
                plan = p["plan"]
                spot, perp = plan["spot"], plan["perp"]
                return (
                    f"{plan['quantity']} {spot['symbol']} {spot['side']} @ {spot['price']} / "
                    f"{perp['symbol']} {perp['side']} @ {perp['price']}, policy {plan['policy']}"
                    + (f", {plan['style']} ({plan['maker']} rests)" if plan.get("style") == "maker-taker" else "")
                    + (f", {plan['style']}" if plan.get("style") == "taker-taker" else "")
                    + _why(p.get("spec"))
                )
            case "event" if p.get("kind") == "order":
                text = f"order {p['client_order_id']} {p['status']} filled {p['filled']}"
                if p.get("average") is not None:
                    text += f" @ {p['average']}"
                if p.get("reason"):
                    text += f" ({p['reason']})"
                return text
            case "event":
                rest = " ".join(f"{k}={v}" for k, v in sorted(p.items()) if k != "kind" and v not in ("", None))
                return f"{p.get('kind')} {rest}".strip()
            case "transition":
                return f"{p['source']} -> {p['dest']} ({p['trigger']}): {p['reason']}"
            case "intent":
                price = f" @ {p['price']}" if p.get("price") is not None else ""
                flags = "".join(
                    [
                        " post-only" if p.get("post_only") else "",
                        " reduce-only" if p.get("reduce_only") else "",
                        " ioc (taker, capped)" if p.get("ioc") else "",
                    ]
                )
                return (
                    f"{p['client_order_id']} {p['role']} {p['purpose']} {p['side']} {p['type']} "
                    f"{p['amount']}{price}{flags}"
                )
            case "cancel" | "query":
                return f"{kind} {p['client_order_id']} {p['symbol']}"
            case "cancel_armed":
                when = "refused" if p.get("when") == "refused" else "resting"
                return f"cancel {p['client_order_id']} {p['symbol']} as soon as {p['answer_of']} is answered {when}"
            case "control":
                return f"operator {p['action']} via {p['via']}: {p['reason']!r} -> {p['result']}"
            case "exit":
                how = (f"passive: spot sell @ {p['spot_price']}, perp buy @ {p['perp_price']}" if p.get("passive")
                       else "aggressive (no fresh book)")  # fmt: skip
                return f"closed by {p['policy']}: {p['reason']} ({how})"
    except (KeyError, TypeError):
        pass  # a malformed payload still gets the generic spelling below
    return " ".join(f"{k}={_short(v)}" for k, v in sorted(p.items()) if v is not None)


def _why(spec: Any) -> str:
    """The strategy's reasons journaled with a package (`PackageSpec.why`), as `; why: k=v ...`."""
    why = spec.get("why") if isinstance(spec, dict) else None
    if not isinstance(why, dict) or not why:
        return ""
    first = [k for k in ("strategy", "edge") if k in why]  # the verdict before the terms
    return "; why: " + " ".join(f"{k}={why[k]}" for k in [*first, *(k for k in why if k not in first)])


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    text = text.replace("\n", " | ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- rows ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalRow:
    seq: int
    kind: str
    package_id: str | None
    payload: dict[str, Any]
    wall_time: float
    mono_time: float
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "package_id": self.package_id,
            "payload": self.payload,
            "wall_time": self.wall_time,
            "mono_time": self.mono_time,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class PackageRow:
    """One package's current view, as the engine last recorded it."""

    package_id: str
    state: State
    exposure: Exposure
    plan: PackagePlan
    created_seq: int
    created_wall: float
    created_mono: float
    updated_seq: int
    updated_wall: float
    updated_mono: float
    last_transition: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "package_id": self.package_id,
            "state": self.state.value,
            "spot": str(self.exposure.spot),
            "perp": str(self.exposure.perp),
            "unknown": self.exposure.unknown,
            "quantity": str(self.plan.quantity),
            "spot_symbol": self.plan.spot.symbol,
            "perp_symbol": self.plan.perp.symbol,
            "execution": self.plan.style.value,
            "spot_role": self.plan.execution(LegRole.SPOT).value,
            "perp_role": self.plan.execution(LegRole.PERP).value,
            "created_seq": self.created_seq,
            "created_wall": self.created_wall,
            "created_mono": self.created_mono,
            "updated_seq": self.updated_seq,
            "updated_wall": self.updated_wall,
            "updated_mono": self.updated_mono,
            "last_transition": self.last_transition,
        }


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    package_id TEXT,
    payload TEXT NOT NULL,
    wall_time REAL NOT NULL,
    mono_time REAL NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_package ON journal (package_id, seq);
-- Append-only: the engine never rewrites history. (A tamperer can drop these; the hash chain catches it.)
CREATE TRIGGER IF NOT EXISTS journal_no_update BEFORE UPDATE ON journal
    BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END;
CREATE TRIGGER IF NOT EXISTS journal_no_delete BEFORE DELETE ON journal
    BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END;
CREATE TABLE IF NOT EXISTS packages (
    package_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    spot TEXT NOT NULL,
    perp TEXT NOT NULL,
    unknown INTEGER NOT NULL,
    plan TEXT NOT NULL,
    created_seq INTEGER NOT NULL,
    created_wall REAL NOT NULL,
    created_mono REAL NOT NULL,
    updated_seq INTEGER NOT NULL,
    updated_wall REAL NOT NULL,
    updated_mono REAL NOT NULL,
    last_transition TEXT
);
"""

_INSERT: Final = (
    "INSERT INTO journal (seq, kind, package_id, payload, wall_time, mono_time, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS: Final = 8  # of a journal row, as `_INSERT` binds them
# Multi-row INSERTs of these many rows (a buffered group is cut into them, largest first): one statement
# per 64 rows costs ~1 µs a row less than executemany's step per row (measured at 140 rows per commit), and
# a single step's rows (1-8: event, intents, transitions, a creation) are one statement, not one per row.
_CHUNKS: Final = (64, 32, 16, 8, 7, 6, 5, 4, 3, 2, 1)
_INSERT_ROWS: Final = {
    n: _INSERT.replace("VALUES (?, ?, ?, ?, ?, ?, ?, ?)", "VALUES " + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n))
    for n in _CHUNKS
}


def _insert_rows(conn: sqlite3.Connection, params: list[Any]) -> None:
    """Insert the flat row buffer (`Journal._rows`) in a few multi-row statements, in seq order."""
    rows, done = len(params) // _COLUMNS, 0
    if rows == 1:
        conn.execute(_INSERT, params)
        return
    for size in _CHUNKS:
        width = size * _COLUMNS
        while rows - done >= size:
            start = done * _COLUMNS
            conn.execute(_INSERT_ROWS[size], params[start : start + width])
            done += size


_UPDATE_PACKAGE: Final = (
    "UPDATE packages SET state = ?, spot = ?, perp = ?, unknown = ?, updated_seq = ?, updated_wall = ?, "
    "updated_mono = ?, last_transition = COALESCE(?, last_transition) WHERE package_id = ?"
)
_INSERT_PACKAGE: Final = (
    "INSERT INTO packages (package_id, state, spot, perp, unknown, plan, created_seq, created_wall, created_mono, "
    "updated_seq, updated_wall, updated_mono, last_transition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PACKAGE_COLUMNS: Final = (
    "package_id, state, spot, perp, unknown, plan, created_seq, created_wall, created_mono, "
    "updated_seq, updated_wall, updated_mono, last_transition"
)


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        else:
            conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise JournalError(f"cannot open journal {str(path)!r}: {exc}") from exc
    return conn


# A WAL this long (frames of one page each: ~8 MB at 4 KB pages) is started over by the writer (`_committed`).
WAL_RESTART_FRAMES: Final = 2_000


class _Checkpointer:
    """Copies the WAL back into the database file on its own thread and connection, so the fsyncs every
    checkpoint needs never stall the engine's event loop (inline auto-checkpoints measured up to ~25 ms,
    blocking every package at once). A checkpoint runs after `every` commits, or `interval` seconds after
    the last one; PASSIVE never blocks the writer or readers."""

    def __init__(
        self, path: Path, synchronous: int, every: int = 200, interval: float = 0.5, *, start: bool = True
    ) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA synchronous={synchronous}")  # the checkpointing connection's fsyncs count
        self.every = every
        self.interval = interval
        self.pending = 0  # commits since the last checkpoint; unsynchronised on purpose (a lost += only delays)
        self.checkpoints = 0
        self.wal_frames = 0  # the WAL's length at the last checkpoint (frames)
        self.writer_checkpoints = 0  # inline ones the writer ran to let the WAL start over (`Journal._committed`)
        self.error: sqlite3.Error | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"legguard-checkpoint:{path.name}", daemon=True)
        if start:
            self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def committed(self) -> None:
        self.pending += 1
        if self.pending >= self.every:
            self._wake.set()

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.interval)
                self._wake.clear()
                if self._stopping:
                    return
                if self.pending:
                    self.run_once()
        finally:
            self._conn.close()

    def run_once(self) -> tuple[int, int, int] | None:
        """One PASSIVE checkpoint: (busy, wal frames, frames checkpointed), or None if it failed."""
        self.pending = 0
        try:
            busy, frames, done = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # busy or I/O: the next round retries; `error` shows what happened
            self.error = exc
            return None
        self.checkpoints += 1
        self.wal_frames = int(frames)
        return int(busy), int(frames), int(done)

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.ident is None:  # never started (tests drive run_once themselves)
            self._conn.close()
        else:
            self._thread.join()


class _Batch:
    """`Journal.batch()`. A class rather than a generator: the engine enters one for every core step."""

    __slots__ = ("_created", "_head", "_journal", "_poisoned", "_savepoint")

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._savepoint: str | None = None

    def __enter__(self) -> None:
        j = self._journal
        j._writable()
        self._head, self._poisoned, self._created = j._head, j._poisoned, len(j._created)
        if j._depth == 0:
            # One wall time per transaction, read (and checked) before it begins: every row of it carries this
            # stamp, so a group's rows spell it once, not a clock read + ~0.7 µs `repr` per row.
            wall = j._wall()
            if type(wall) is not float or wall - wall != 0.0:  # (x - x is nan for nan and +-inf)
                wall = _finite(wall)
            j._txn_wall, j._wall_text = wall, _float_repr(wall)
            j._conn.execute("BEGIN IMMEDIATE")
            if j._stale:  # a transaction failed (perhaps another writer's rows): chain on what is there
                try:
                    self._head = j._head = j._read_head()
                    j._meta_head = j._read_meta_head()
                except BaseException:
                    j._conn.execute("ROLLBACK")
                    raise
                j._stale = False
            j._poisoned = False
        else:
            j._flush()  # the outer batch's rows belong before the savepoint
            self._savepoint = f"lg_batch_{j._depth}"
            j._conn.execute(f"SAVEPOINT {self._savepoint}")
        j._depth += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        j = self._journal
        j._depth -= 1
        savepoint = self._savepoint
        if savepoint is not None:
            if exc_type is None:
                j._conn.execute(f"RELEASE {savepoint}")
            else:  # what went wrong inside is undone, so the outer batch is as healthy as before
                j._clear_buffers()  # everything buffered since the savepoint is the inner batch's
                j._conn.execute(f"ROLLBACK TO {savepoint}")
                j._conn.execute(f"RELEASE {savepoint}")
                j._head, j._poisoned = self._head, self._poisoned
                j._restore_created(self._created)
            return
        if exc_type is not None:
            j._abort(self._head)
            return
        if j._poisoned:
            j._abort(self._head)
            raise JournalError("journal batch rolled back: a write inside it failed and the error was swallowed")
        started = time.perf_counter() if j.on_commit is not None else 0.0
        head_text = None
        try:
            j._flush()
            if j._head != self._head:
                head_text = j._head_text()
                j._advance_meta_head(head_text)
            j._conn.execute("COMMIT")
        except BaseException:
            j._abort(self._head)
            raise
        if head_text is not None:
            j._meta_head = head_text
        j._created.clear()
        if j.on_commit is not None:
            j.on_commit(time.perf_counter() - started)
        if j._checkpointer is not None:
            j._committed()


class EncodedStep(NamedTuple):
    """One core step's journal rows made ahead of its time stamp (`Journal.encode_step`): the rows' kinds and
    texts, the package's view (state, exposure) and its last transition. (A named tuple: made on every step.)"""

    package_id: str
    rows: tuple[tuple[str, str], ...]
    exposure_row: tuple[str, str, str, int]
    last_transition: str | None


class Journal:
    """One engine's journal. Single writer (enforced: `open` locks `<db>.lock`); readers (the `audit` CLI)
    may open the file concurrently.

    Outside `batch()`, every append is its own transaction. Inside, everything appended commits at once
    at exit, or not at all: the engine wraps the rows of one core step in a batch and sends orders only
    after it exits. Every row of one transaction carries the same wall time, read as it begins.
    """

    # Invariant (outside a failed write): self._head == (seq, hash) of the last row in `journal`
    # (seq 0 and the genesis hash when empty), and meta 'head' spells the same pair.

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        durability: Durability | None,
        readonly: bool,
        wall_clock: Callable[[], float] = time.time,
        checkpointer: _Checkpointer | None = None,
    ) -> None:
        self._conn = conn
        self._checkpointer = checkpointer
        self._lock: _WriterLock | None = None  # set by open() for a writer
        self.path = path
        self.durability = durability
        self.readonly = readonly
        self._wall = wall_clock
        self._depth = 0
        self._poisoned = False  # a write inside the open batch failed: it must not commit
        # Rows chained but not yet handed to SQLite, flat (the 8 columns of `_INSERT` for each row, in order);
        # flushed before COMMIT, savepoints and every read.
        self._rows: list[Any] = []
        # The packages table's writes, buffered likewise: a package's view is written once per flush, however
        # many steps of it the transaction holds (a dispatch step's package is inserted with the step's state,
        # not inserted and then updated). Package id -> the `_INSERT_PACKAGE` row of a package created in
        # this transaction, or the `_UPDATE_PACKAGE` parameters of one that already existed.
        self._new_packages: dict[str, list[Any]] = {}
        self._package_updates: dict[str, list[Any]] = {}
        self._known: set[str] = set()  # package ids known to exist (a cache: the table is the truth)
        # `defer_created`: package id -> its creation write, run by the first transaction that mentions the
        # package; `_created` lists those run by the open transaction (put back if it rolls back).
        self._deferred: dict[str, Callable[[], None]] = {}
        self._created: list[tuple[str, Callable[[], None]]] = []
        self._kinds_ok: set[str] = set()  # fact kinds already validated (and the journal is writable)
        self._urgent = False  # the open `commit` is a kill-switch step's: no housekeeping on its path
        # The open transaction's wall time and its JSON (`_Batch`), and `_insert`'s last mono time and its JSON.
        self._txn_wall, self._wall_text = math.nan, ""
        self._mono: tuple[float, str] = (math.nan, "")
        self.on_commit: Callable[[float], None] | None = None  # seconds per COMMIT (metrics); None costs nothing
        # Package numbers of the block reserved durably by this process (`next_package_number`).
        self._next_number, self._block_end = 1, 0
        # The ids of the current number block already in the packages table (looked up once, when the block
        # was reserved; None: not looked up): a new package whose id is spelled from a number handed out of
        # the block needs no look-up of its own (`_prepare_created`).
        self._block_start = 1
        self._block_taken: frozenset[str] | None = None
        self.durable_commits = 0  # commits made with an fsync whatever the durability (counter reservations)
        meta = self._load_meta()
        self.journal_id: str = meta["journal_id"]
        self._genesis = genesis_hash(self.journal_id)
        self._head: tuple[int, str] = self._read_head()
        # What meta 'head' said when this writer last read or wrote it: each commit advances it only from that
        # value (`_advance_meta_head`), which is how another writer's commit is caught without re-reading
        # the chain's head in every transaction. `_stale`: re-read both in the next transaction.
        self._meta_head: str | None = meta.get("head")
        self._stale = False

    # --- opening ------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        durability: Durability = Durability.PROCESS,
        *,
        readonly: bool = False,
        wall_clock: Callable[[], float] = time.time,
        background_checkpoint: bool = True,
    ) -> Journal:
        """Open (creating if needed, unless `readonly`) the journal at `path`. A writer checkpoints the WAL
        on a background thread unless `background_checkpoint` is False (then SQLite does it inline)."""
        durability = Durability(durability)  # also accepts "process" / "power" from config
        path = Path(path)
        if readonly and not path.is_file():
            raise JournalNotFound(f"no journal at {str(path)!r}")
        lock = None if readonly else _WriterLock(path)
        try:
            conn = _connect(path, readonly=readonly)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        try:
            if not readonly:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise JournalError(f"{str(path)!r}: cannot switch to WAL mode (got {mode!r})")
                conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
                cls._init_schema(conn, path)
            journal = cls(
                conn,
                path,
                durability=None if readonly else durability,
                readonly=readonly,
                wall_clock=wall_clock,
            )
            journal._lock = lock
            if background_checkpoint and not readonly:
                journal._checkpointer = _Checkpointer(path, _SYNCHRONOUS[durability])
                conn.execute("PRAGMA wal_autocheckpoint=0")
            return journal
        except sqlite3.DatabaseError as exc:
            conn.close()
            if lock is not None:
                lock.release()
            raise NotAJournal(f"{str(path)!r} is not a legguard journal: {exc}") from exc
        except BaseException:
            conn.close()
            if lock is not None:
                lock.release()
            raise

    @staticmethod
    def _init_schema(conn: sqlite3.Connection, path: Path) -> None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise NotAJournal(f"{str(path)!r} is an SQLite database but not a legguard journal")
        if "meta" in tables:
            return
        # executescript commits any open transaction first, so the script carries its own.
        conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        journal_id = "".join(secrets.choice(_BASE36) for _ in range(4))
        conn.execute("BEGIN IMMEDIATE")
        try:
            # OR IGNORE: if two processes create the file at once, the first complete set of keys wins.
            conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("journal_id", journal_id),
                    ("package_counter", "0"),
                    ("head", f"0:{genesis_hash(journal_id)}"),
                    ("created_wall", repr(time.time())),
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _load_meta(self) -> dict[str, str]:
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as exc:
            raise NotAJournal(f"{str(self.path)!r} is not a legguard journal: {exc}") from exc
        version = meta.get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise NotAJournal(
                f"{str(self.path)!r}: journal schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        if not _JOURNAL_ID_RE.match(meta.get("journal_id", "")):
            raise NotAJournal(f"{str(self.path)!r}: meta journal_id {meta.get('journal_id')!r} is not 4 base36 chars")
        return meta

    def _read_head(self) -> tuple[int, str]:
        row = self._conn.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, self._genesis) if row is None else (int(row[0]), str(row[1]))

    def _read_meta_head(self) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'head'").fetchone()
        return None if row is None else str(row[0])

    def _advance_meta_head(self, head_text: str) -> None:
        """Set meta 'head' inside the open transaction, refusing to if it is no longer what this writer last
        committed: then another writer appended meanwhile (around the lock, which only `Journal.open` takes),
        and this transaction's rows, chained on the old head, would fork the chain. The write lock is held
        since BEGIN IMMEDIATE, so nobody can append between this check and COMMIT. A writer that appended
        rows without touching meta collides on their seq instead (the primary key)."""
        if self._meta_head is None:  # no head key (a journal from before it existed): nothing to compare
            self._set_meta("head", head_text)
            return
        cur = self._conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'head' AND value = ?", (head_text, self._meta_head)
        )
        if cur.rowcount != 1:
            raise JournalError(
                f"journal {self.journal_id}: another writer committed to {str(self.path)!r} since this one's last "
                f"commit (meta head is no longer {self._meta_head!r}); this transaction was rolled back so the "
                f"chain does not fork, and the next one chains on the new head"
            )

    def close(self) -> None:
        if self._depth:
            raise JournalError("close() inside journal.batch(): the batch would be lost")
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self._conn.close()  # the last connection to close checkpoints and removes the WAL
        if self._lock is not None:
            self._lock.release()  # after the last write: the next writer starts from a closed file
            self._lock = None

    def checkpoint(self) -> tuple[int, int, int]:
        """Checkpoint the WAL now on this connection (PASSIVE): (busy, wal frames, frames checkpointed)."""
        row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transactions -------------------------------------------------------------------------------

    @property
    def in_batch(self) -> bool:
        """Whether a `batch()` is open: what is written now commits only when the outermost one exits."""
        return self._depth > 0

    def batch(self) -> AbstractContextManager[None]:
        """Everything appended inside commits as ONE transaction at exit, or is rolled back if the block
        raises. Nested batches join the outer one (a failing inner batch rolls back only its own rows)."""
        return _Batch(self)

    def _run_write(self, write: Callable[[], _T]) -> _T:
        """The write phase of a typed helper, which validated everything before calling. Inside an open
        batch it runs WITHOUT a savepoint (that is what keeps small batches fast); a failure then leaves
        partial rows in that batch, so it poisons it: the whole batch rolls back even if the caller
        swallows the error. Outside a batch it is its own transaction."""
        if self._depth:
            try:
                return write()
            except BaseException:
                self._poisoned = True
                raise
        with _Batch(self):
            return write()

    def _committed(self) -> None:
        checkpointer = self._checkpointer
        assert checkpointer is not None
        checkpointer.committed()
        urgent, self._urgent = self._urgent, False
        if checkpointer.wal_frames >= WAL_RESTART_FRAMES and not urgent:
            # Under back-to-back commits the background checkpoint never catches up: it copies what the WAL
            # held when it started while the writer appends more, so the WAL is never complete, never starts
            # over, and grows without bound (87 MB over 3,000 commits in the journal bench), every commit
            # slower for it. Between two of its own transactions the writer's PASSIVE checkpoint has no
            # appender to race: it copies the little the background left and the next transaction starts the
            # WAL from its beginning. Rare (once per WAL_RESTART_FRAMES frames of sustained load).
            checkpointer.wal_frames = 0
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                checkpointer.writer_checkpoints += 1
            except sqlite3.Error as exc:  # busy with the background one: it retries at its next round
                checkpointer.error = exc
        if checkpointer.pending > 10 * checkpointer.every and not checkpointer.alive:
            # The checkpoint thread is gone: let SQLite checkpoint inline again rather than grow the WAL forever.
            self._conn.execute("PRAGMA wal_autocheckpoint=1000")
            self._checkpointer = None

    def _head_text(self) -> str:
        return f"{self._head[0]}:{self._head[1]}"

    def _flush(self) -> None:
        """Hand the batch's buffered rows and package views to SQLite. A failure poisons the open batch, as
        in `_run_write`: part of the buffers may be written, so it must never commit (a read inside a batch
        flushes too, and its caller may swallow the error)."""
        try:
            if self._new_packages or self._package_updates:
                self._flush_packages()
            if self._rows:
                params, self._rows = self._rows, []
                try:
                    _insert_rows(self._conn, params)
                except sqlite3.IntegrityError as exc:  # a seq already taken: rows appended behind this writer
                    raise JournalError(
                        f"journal {self.journal_id}: seq {params[0]} onwards is already taken in "
                        f"{str(self.path)!r} ({exc}): another writer appended since this one's last commit; this "
                        f"transaction is rolled back so the chain does not fork, and the next one chains on the "
                        f"new head"
                    ) from None
        except BaseException:
            if self._depth:
                self._poisoned = True
            raise

    def _flush_packages(self) -> None:
        # One package (the common commit: one step) is one execute, cheaper than an executemany of one.
        if self._new_packages:
            created, self._new_packages = list(self._new_packages.values()), {}
            if len(created) == 1:
                self._conn.execute(_INSERT_PACKAGE, created[0])
            else:
                self._conn.executemany(_INSERT_PACKAGE, created)
        if self._package_updates:
            updates, self._package_updates = self._package_updates, {}
            if len(updates) == 1:
                cur = self._conn.execute(_UPDATE_PACKAGE, next(iter(updates.values())))
            else:
                cur = self._conn.executemany(_UPDATE_PACKAGE, list(updates.values()))
            if cur.rowcount != len(updates):
                marks = ", ".join("?" * len(updates))
                there = {r[0] for r in self._conn.execute(
                    f"SELECT package_id FROM packages WHERE package_id IN ({marks})", list(updates)
                )}  # fmt: skip
                gone = sorted(set(updates) - there)
                raise UnknownPackage(f"package_id {gone[0]!r}: row vanished from the packages table")

    def _clear_buffers(self) -> None:
        self._rows.clear()
        self._new_packages.clear()
        self._package_updates.clear()

    def _q(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Every read goes through here, so a batch reads its own buffered rows."""
        self._flush()
        return self._conn.execute(sql, args)

    def _abort(self, head: tuple[int, str]) -> None:
        self._clear_buffers()
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._head = head
        self._poisoned = False
        self._stale = True  # whatever failed (another writer's rows included), the next one re-reads the head
        self._restore_created(0)

    def _restore_created(self, mark: int) -> None:
        """Deferred creations written since `mark` were rolled back: they wait for the next transaction."""
        while len(self._created) > mark:
            pid, write = self._created.pop()
            self._known.discard(pid)
            self._deferred[pid] = write

    def _writable(self) -> None:
        if self.readonly:
            raise JournalError(f"journal {str(self.path)!r} was opened read-only")

    # --- appending ----------------------------------------------------------------------------------

    def _insert(self, kind: str, package_id: str | None, text: str, mono: float) -> int:
        """Chain and insert one prepared row (inside `_run_write`), stamped with the transaction's wall time.
        Returns its seq."""
        if self._deferred and package_id in self._deferred:
            # The package's creation row goes first, in this same transaction (`defer_created`).
            write = self._deferred.pop(package_id)
            self._created.append((package_id, write))
            write()
        seq, prev = self._head
        seq += 1
        # `row_hash` spelled inline (it is the hot loop): the wall time was checked by `_Batch` and every
        # caller passed `mono` through `_finite`, so they are finite floats and float.__repr__ is their JSON.
        # `verify` recomputes every row with `row_hash` itself, so the two spellings cannot drift apart.
        pid = "null" if package_id is None else _json_str(package_id)
        monos = self._mono
        if monos[0] is not mono:  # the rows of one step share the same float
            monos = self._mono = (mono, _float_repr(mono))
        # A kind is a lowercase identifier (FACT_KIND_RE, or one of REPLAYED_KINDS): its JSON is itself quoted.
        body = f'{prev}[{seq},"{kind}",{pid},{_json_str(text)},{self._wall_text},{monos[1]}]'
        digest = _sha256(body.encode()).hexdigest()
        self._rows += (seq, kind, package_id, text, self._txn_wall, mono, prev, digest)
        self._head = (seq, digest)
        return seq

    def _require_package(self, package_id: str) -> None:
        if package_id in self._known or package_id in self._deferred:
            return
        if self._conn.execute("SELECT 1 FROM packages WHERE package_id = ?", (package_id,)).fetchone() is None:
            raise UnknownPackage(f"package_id {package_id!r}: no package_created row in journal {self.journal_id}")
        self._known.add(package_id)

    def forget_package(self, package_id: str) -> None:
        """Drop `package_id` from the cache of packages known to exist (the engine released it from memory:
        the cache must not grow with history). A later row for it looks the table up again."""
        self._known.discard(package_id)

    # The writers return None (the engine's JournalLike protocol says so); `head` has the last seq.

    def package_created(self, plan: PackagePlan, spec: Mapping[str, Any], mono: float) -> None:
        """Journal a new package (state pending, no exposure)."""
        self._run_write(self._prepare_created(plan, spec, mono))

    def defer_created(self, plan: PackagePlan, spec: Mapping[str, Any], mono: float) -> None:
        """Validate a new package now and journal it (as `package_created` would) in the first transaction
        that writes a row of it — the engine's dispatch step, so creation and dispatch commit together. A
        package nothing was ever journaled for (cancelled before its first step) is never written: nothing
        of it can have reached the venue, since every order is journaled first. A transaction that rolls
        back puts the creation back in waiting."""
        write = self._prepare_created(plan, spec, mono)
        self._deferred[plan.package_id] = write

    def _prepare_created(self, plan: PackagePlan, spec: Mapping[str, Any], mono: float) -> Callable[[], None]:
        self._writable()
        pid = plan.package_id
        text, plan_spelled = created_text(plan, spec)
        kind = PACKAGE_CREATED
        taken = self._block_taken
        if (
            pid in self._known
            or pid in self._deferred
            # The engine's id for a number handed out of this process's block: looked up with the block.
            or (pid in taken if taken is not None and self._from_block(pid) else
                self._conn.execute("SELECT 1 FROM packages WHERE package_id = ?", (pid,)).fetchone())
        ):  # fmt: skip
            raise DuplicatePackage(f"package_id {pid!r} already exists in journal {self.journal_id}")
        mono = _finite(mono)  # SQLite REAL hands floats back: hash what is read

        def write() -> None:
            seq = self._insert(kind, pid, text, mono)
            wall = self._txn_wall
            self._new_packages[pid] = [pid, State.PENDING.value, "0", "0", 0, plan_spelled, seq, wall, mono,
                                       seq, wall, mono, None]  # fmt: skip
            self._known.add(pid)

        return write

    def record_step(
        self,
        package_id: str,
        event: Event,
        commands: Sequence[Command],
        state: State,
        exposure: Exposure,
        mono: float,
    ) -> None:
        """Journal one core step: the event fed to the core, one row per command it returned (SendOrder is
        covered by its intent row), and the package's new state + exposure. One transaction."""
        self._run_write(self.prepare_step(package_id, event, commands, state, exposure, mono))

    def prepare_step(
        self,
        package_id: str,
        event: Event,
        commands: Sequence[Command],
        state: State,
        exposure: Exposure,
        mono: float,
    ) -> Callable[[], None]:
        """`record_step` validated and encoded now, written by the returned function inside `commit()` (the
        engine's group commit): a bad step fails here, alone, never inside the group's transaction."""
        return self.bind_step(self.encode_step(package_id, event, commands, state, exposure), mono)

    def encode_step(
        self, package_id: str, event: Event, commands: Sequence[Command], state: State, exposure: Exposure
    ) -> EncodedStep:
        """The part of `prepare_step` that does not depend on the step's time: validated, every row's text
        made. The engine encodes a step it expects ahead of its event (a prepared reaction: the kill switch's
        unwind while the cancels travel) and binds it to the step's time only when that event comes."""
        self._writable()
        if type(state) is not State:
            state = State(state)
        rows = [(EVENT, event_text(event))]
        last_transition: str | None = None
        for command in commands:
            row = command_text(command)
            if row is not None:
                rows.append(row)
                if row[0] == TRANSITION:
                    assert isinstance(command, Transitioned)
                    last_transition = transition_text(
                        {"source": command.source.value, "dest": command.dest.value, "trigger": command.trigger.value}
                    )
        self._require_package(package_id)
        exposure_row = (state.value, str(exposure.spot), str(exposure.perp), int(exposure.unknown))
        return EncodedStep(package_id, tuple(rows), exposure_row, last_transition)

    def bind_step(self, step: EncodedStep, mono: float) -> Callable[[], None]:
        """An encoded step (`encode_step`) as the write `prepare_step` returns, stamped `mono`: the same rows,
        byte for byte, whenever it was encoded."""
        self._writable()
        package_id, rows, exposure_row, last_transition = step
        if package_id not in self._known:  # forgotten since it was encoded (released from memory): look again
            self._require_package(package_id)
        mono = _finite(mono)

        def write() -> None:
            for kind, text in rows:
                seq = self._insert(kind, package_id, text, mono)
            wall = self._txn_wall
            created = self._new_packages.get(package_id)
            if created is not None:  # created in this transaction: insert it as this step leaves it
                created[1:5] = exposure_row
                created[9:12] = seq, wall, mono
                if last_transition is not None:
                    created[12] = last_transition
                return
            update = self._package_updates.get(package_id)
            if update is None:
                self._package_updates[package_id] = [*exposure_row, seq, wall, mono, last_transition, package_id]
            else:  # an earlier step of this package in this transaction: the later one's view, as COALESCE
                update[0:7] = *exposure_row, seq, wall, mono
                if last_transition is not None:
                    update[7] = last_transition

        return write

    def prepare_fact(
        self, kind: str, package_id: str | None, payload: Mapping[str, Any], mono: float
    ) -> Callable[[], None]:
        """`record` validated and encoded now, written by the returned function inside `commit()`."""
        if kind not in self._kinds_ok:
            self._check_kind(kind)
        text = fact_text(payload)
        if package_id is not None and package_id not in self._known:
            self._require_package(package_id)
        if type(mono) is not float or mono - mono != 0.0:  # `_finite`'s test, without its call when it passes
            mono = _finite(mono)
        # A partial of the plain function, not a closure: two objects (no cells, no bound method) alive until
        # its group commits (fewer garbage-collector passes), and one Python frame fewer when it runs.
        # (The seq `_insert` returns is not wanted here.)
        return cast("Callable[[], None]", _partial(_INSERT_ROW, self, kind, package_id, text, mono))

    def commit(self, writes: Sequence[Callable[[], None]], *, urgent: bool = False) -> None:
        """Run prepared writes (`prepare_step`, `prepare_fact`) as ONE transaction, in order: all commit or
        none does (the engine's group commit: the steps of one scheduler round). `urgent`: the kill switch's
        order waits for this commit; housekeeping the writer may owe (the WAL's restart) waits for the next."""
        self._urgent = urgent
        with _Batch(self):
            try:
                # A fact of a package whose creation is deferred is written by `_insert` (the creation row goes
                # first); `deferred` is the live dict, so a creation written meanwhile is seen.
                deferred = self._deferred
                start, end = 0, len(writes)
                while start < end:
                    write = writes[start]
                    if type(write) is not _partial or write.func is not _INSERT_ROW or write.args[2] in deferred:
                        write()
                        start += 1
                        continue
                    stop = start + 1  # a run of facts (`prepare_fact`): chained in one loop, not a call each
                    while (
                        stop < end and type(w := writes[stop]) is _partial and w.func is _INSERT_ROW
                        and w.args[2] not in deferred
                    ):  # fmt: skip
                        stop += 1
                    self._chain_facts(writes[start:stop])  # type: ignore[arg-type]  # partials, checked above
                    start = stop
            except BaseException:
                self._poisoned = True  # as `_run_write`: partial rows never commit, even if swallowed
                raise

    def _chain_facts(self, facts: Sequence[functools.partial[int]]) -> None:
        """`_insert` for each of a run of `prepare_fact` partials, with the chain's state in locals (~0.5 µs
        a row less than a call each: a group commit is mostly such rows). Same rows, same bytes: the body
        below is `_insert`'s (no deferred creation of theirs is due: `commit` checked)."""
        seq, prev = self._head
        rows, wall, wall_text, monos = self._rows, self._txn_wall, self._wall_text, self._mono
        try:
            for fact in facts:
                _, kind, package_id, text, mono = fact.args
                pid = "null" if package_id is None else _json_str(package_id)
                if monos[0] is not mono:
                    monos = (mono, _float_repr(mono))
                digest = _sha256(
                    f'{prev}[{seq + 1},"{kind}",{pid},{_json_str(text)},{wall_text},{monos[1]}]'.encode()
                ).hexdigest()
                rows += (seq + 1, kind, package_id, text, wall, mono, prev, digest)
                seq, prev = seq + 1, digest
        finally:  # the rows buffered so far and the head agree, even if a row failed (the batch is poisoned)
            self._head = (seq, prev)
            self._mono = monos

    def record(self, kind: str, package_id: str | None, payload: Mapping[str, Any], mono: float) -> None:
        """Journal an audited fact that is not replayed (see FACT_KIND_RE): per package (`ack`,
        `order_error`, `fault`, `recovery`, ...) or engine-wide with package_id None (`engine`, with the
        event and reason in the payload)."""
        if kind not in self._kinds_ok:
            self._check_kind(kind)
        text = fact_text(payload)
        if package_id is not None and package_id not in self._known:
            self._require_package(package_id)
        mono = _finite(mono)
        if self._depth:
            self._insert(kind, package_id, text, mono)  # only chains and buffers: nothing to poison
        else:
            with _Batch(self):
                self._insert(kind, package_id, text, mono)

    def _check_kind(self, kind: str) -> None:
        self._writable()
        if kind in REPLAYED_KINDS:
            raise InvalidKind(
                f"kind {kind!r} is replayed by `audit verify`: write it with package_created() / record_step()"
            )
        if not isinstance(kind, str) or not FACT_KIND_RE.match(kind):
            raise InvalidKind(f"kind {kind!r}: must be a lowercase identifier matching {FACT_KIND_RE.pattern}")
        self._kinds_ok.add(kind)

    def next_package_number(self) -> int:
        """The next package number (1, 2, ... within one process; a restart skips to a fresh block). Every
        client order id is derived from it, so a number is never handed out twice in the journal's whole
        life, even if a crash loses the last commits (`durability = "process"` on a power loss): numbers are
        taken from blocks of `NUMBER_BLOCK` whose reservation is committed WITH an fsync before the first
        number of the block is used, so the reservation outlives any commit that could mention a number of
        it. A number taken is never given back (a rolled-back package leaves a gap)."""
        self._writable()
        if self._next_number > self._block_end:
            start, self._block_end = self._reserve("package_counter", NUMBER_BLOCK)
            self._next_number = self._block_start = start
            self._block_taken = self._ids_taken(start, self._block_end)
        number = self._next_number
        self._next_number += 1
        return number

    def _from_block(self, package_id: str) -> bool:
        """`package_id` is `P` and the (6+ digit) number of one handed out of the current block."""
        digits = package_id[1:]
        if package_id[:1] != "P" or not (digits.isascii() and digits.isdigit()):
            return False
        number = int(digits)
        return self._block_start <= number < self._next_number and package_id == f"P{number:06d}"

    def _ids_taken(self, start: int, end: int) -> frozenset[str] | None:
        """The package ids spelled from numbers `start`..`end` (`P` and at least six digits) already in the
        packages table, in one look-up: a range of equal-length ids is a range of strings. None when the
        block's ids differ in length (a block across a power of ten: each package is then looked up alone)."""
        low, high = f"P{start:06d}", f"P{end:06d}"
        if len(low) != len(high):
            return None
        rows = self._q("SELECT package_id FROM packages WHERE package_id BETWEEN ? AND ?", (low, high))
        return frozenset(r[0] for r in rows)

    def next_epoch(self) -> int:
        """A fresh restart epoch (1, 2, ...), committed with an fsync before it is returned: recovery puts it
        in the client ids of every order a recovered package sends from then on, so no such id can equal one
        the crashed process sent and the journal lost."""
        self._writable()
        return self._reserve("epoch", 1)[0]

    def _reserve(self, key: str, count: int) -> tuple[int, int]:
        """Durably advance the counter `key` by `count`: (first, last) of the numbers reserved."""
        if self._depth:
            raise JournalError(f"journal {self.journal_id}: a {key} block is reserved outside journal.batch()")

        def write() -> tuple[int, int]:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            last = int(row[0]) if row is not None else 0
            self._set_meta(key, str(last + count))
            return last + 1, last + count

        return self._durably(write)

    def sync(self) -> tuple[int, str]:
        """Make every commit so far durable, whatever the durability (one fsync'd commit, recording the head
        as meta 'synced_head'); returns the head. The anchorer signs only heads made durable this way."""
        self._writable()
        if self._depth:
            raise JournalError(f"journal {self.journal_id}: sync() inside journal.batch()")

        def write() -> tuple[int, str]:
            head = self._head = self._read_head()
            self._set_meta("synced_head", f"{head[0]}:{head[1]}")
            return head

        return self._durably(write)

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _durably(self, write: Callable[[], _T]) -> _T:
        """`write` in its own transaction, committed with synchronous=FULL whatever the journal's durability,
        so it survives a power loss and every commit before it does too (the WAL is synced in order)."""
        self._conn.execute("PRAGMA synchronous=FULL")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = write()
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        finally:
            self._conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.durability or Durability.PROCESS]}")
        self.durable_commits += 1
        return result

    def backup_to(self, path: str | Path) -> None:
        """A consistent copy of the journal as committed now (the crash harness keeps one as "what survived
        a power loss")."""
        self._flush()
        with sqlite3.connect(Path(path)) as target:
            self._conn.backup(target)
        target.close()

    # --- reading ------------------------------------------------------------------------------------

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last row written (0 and the genesis hash when empty)."""
        return self._head

    def package_ids(self) -> list[str]:
        """Every package, in creation order."""
        return [r[0] for r in self._q("SELECT package_id FROM packages ORDER BY created_seq")]

    def packages(self, state: State | None = None) -> list[PackageRow]:
        """Current view of every package (or those in `state`), in creation order."""
        sql = f"SELECT {_PACKAGE_COLUMNS} FROM packages"
        args: tuple[str, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            args = (State(state).value,)
        return [_package_row(r) for r in self._q(sql + " ORDER BY created_seq", args)]

    def package(self, package_id: str) -> PackageRow:
        row = self._q(f"SELECT {_PACKAGE_COLUMNS} FROM packages WHERE package_id = ?", (package_id,)).fetchone()
        if row is None:
            raise UnknownPackage(f"package_id {package_id!r}: not in journal {self.journal_id}")
        return _package_row(row)

    def open_packages(self) -> list[PackageRow]:
        """Packages not in a terminal state (hedged ones included: they hold exposure). For recovery."""
        terminal = sorted(s.value for s in TERMINAL_STATES)
        marks = ", ".join("?" * len(terminal))
        sql = f"SELECT {_PACKAGE_COLUMNS} FROM packages WHERE state NOT IN ({marks}) ORDER BY created_seq"
        return [_package_row(r) for r in self._q(sql, terminal)]

    def timeline(self, package_id: str) -> list[JournalRow]:
        """Every row of one package, in order."""
        cur = self._q("SELECT * FROM journal WHERE package_id = ? ORDER BY seq", (package_id,))
        return [_journal_row(r) for r in cur]

    def engine_log(self) -> list[JournalRow]:
        """Engine-wide rows (started / stopped / halted / resumed / note), in order."""
        cur = self._q("SELECT * FROM journal WHERE package_id IS NULL ORDER BY seq")
        return [_journal_row(r) for r in cur]

    def rows(self, after: int = 0) -> Iterator[JournalRow]:
        """Every row with seq > `after`, in order (streamed)."""
        for r in self._q("SELECT * FROM journal WHERE seq > ? ORDER BY seq", (after,)):
            yield _journal_row(r)

    def intents(self, package_id: str) -> list[OrderIntent]:
        """Every order intent of a package, in the order they were journaled (i.e. before sending)."""
        cur = self._q(
            "SELECT payload FROM journal WHERE package_id = ? AND kind = ? ORDER BY seq", (package_id, INTENT)
        )
        return [OrderIntent.from_dict(json.loads(r[0])) for r in cur]

    def events(self, package_id: str) -> list[Event]:
        """Every event fed to the package's core, in order (what a recovering engine replays)."""
        cur = self._q("SELECT payload FROM journal WHERE package_id = ? AND kind = ? ORDER BY seq", (package_id, EVENT))
        return [event_from_dict(json.loads(r[0])) for r in cur]

    # --- raw access for the verifier: unparsed, so tampered rows are reported rather than crash ----------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: every read inside sees one consistent state, even while the engine writes."""
        if self._depth:
            raise JournalError("snapshot() inside journal.batch()")
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("ROLLBACK")

    def meta(self) -> dict[str, str]:
        return dict(self._q("SELECT key, value FROM meta").fetchall())

    def raw_rows(self) -> Iterator[tuple[Any, ...]]:
        """(seq, kind, package_id, payload text, wall_time, mono_time, prev_hash, hash) in seq order."""
        yield from self._q("SELECT * FROM journal ORDER BY seq")

    def raw_package_ids(self) -> list[str]:
        """Every package id the journal mentions, ordered by its first row."""
        sql = "SELECT package_id FROM journal WHERE package_id IS NOT NULL GROUP BY package_id ORDER BY MIN(seq)"
        return [r[0] for r in self._q(sql)]

    def raw_package_rows(self, package_id: str) -> Iterator[tuple[int, str, str]]:
        """(seq, kind, payload text) of one package, in order."""
        sql = "SELECT seq, kind, payload FROM journal WHERE package_id = ? ORDER BY seq"
        yield from self._q(sql, (package_id,))

    def hash_at(self, seq: int) -> str | None:
        """The stored hash of row `seq`, or None if there is no such row (anchors are checked against it)."""
        row = self._q("SELECT hash FROM journal WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def last_seq(self) -> int:
        row = self._q("SELECT MAX(seq) FROM journal").fetchone()
        return int(row[0] or 0)

    def raw_packages(self) -> list[tuple[Any, ...]]:
        """The packages table as stored, columns as in `_PACKAGE_COLUMNS`."""
        return self._q(f"SELECT {_PACKAGE_COLUMNS} FROM packages ORDER BY created_seq").fetchall()

    def pragma(self, name: str) -> Any:
        """Read one PRAGMA (tests and diagnostics)."""
        if not re.fullmatch(r"[a-z_]+", name):
            raise ValueError(f"pragma name {name!r} is not a plain identifier")
        return self._conn.execute(f"PRAGMA {name}").fetchone()[0]


_partial: Final = functools.partial
_INSERT_ROW: Final = Journal._insert


def _package_row(r: tuple[Any, ...]) -> PackageRow:
    (pid, state, spot, perp, unknown, plan, created_seq, created_wall, created_mono,
     updated_seq, updated_wall, updated_mono, last_transition) = r  # fmt: skip
    return PackageRow(
        package_id=pid,
        state=State(state),
        exposure=Exposure(spot=Decimal(spot), perp=Decimal(perp), unknown=bool(unknown)),
        plan=PackagePlan.from_dict(json.loads(plan)),
        created_seq=created_seq,
        created_wall=created_wall,
        created_mono=created_mono,
        updated_seq=updated_seq,
        updated_wall=updated_wall,
        updated_mono=updated_mono,
        last_transition=last_transition,
    )


def _journal_row(r: tuple[Any, ...]) -> JournalRow:
    seq, kind, package_id, payload, wall, mono, prev, digest = r
    return JournalRow(seq, kind, package_id, json.loads(payload), wall, mono, prev, digest)
