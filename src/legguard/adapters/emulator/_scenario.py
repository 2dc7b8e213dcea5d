"""Scenarios: a small TOML timeline played on the emulator's clock, on top of its faults and control API.

    name = "ETH perp crash"
    [emulator]
    funding_interval = 60          # seconds between funding times (optional)
    perp_wallet = "400"            # USDT in the USDⓈ-M wallet at start (optional; default 1,000,000)
    leverage = 20                  # every perp's leverage at start (optional; default 5; clients may change it)

    [[events]]
    at = 60                        # seconds after the emulator started
    action = "move"                # the perp drops 8 % over 5 s
    symbol = "ETHUSDT"
    market = "linear"              # linear | spot (default linear)
    pct = -8                       # or: price = 2500
    over = 5                       # seconds, in steps of `step` (default 0.5 s); 0: at once
    both = false                   # true: the other market of the same base moves too (basis kept)

    [[events]]
    at = 70
    action = "funding"             # the next funding times settle at this rate ("auto": the premium formula)
    symbol = "ETHUSDT"
    rate = "-0.0005"

    [[events]]
    at = 90
    action = "fault"               # any fault of POST /_emulator/faults, active for `for` seconds
    for = 20
    fault = { fault = "http_error", market = "linear", status = 503 }

    [[events]]
    at = 0
    action = "lag"                 # user-data events trail REST by this much (for `for` seconds, or for good)
    user_stream_ms = 400

    [[events]]
    at = 100
    action = "trade"               # a print of the wider market (fills our resting orders it reaches)
    symbol = "ETHUSDT"
    side = "sell"                  # the aggressor
    price = "2500"
    quantity = "3"

Everything runs on the emulator's scheduler, so a scenario plays identically for the same seed (and under
the manual clock of tests). Errors name the event and the field: `events[2].pct: ...`.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeGuard

from legguard.domain import MarketKind, Side

from . import _wire as w
from ._emulator import Emulator, parse_fault

ACTIONS = ("move", "funding", "fault", "lag", "trade")
_COMMON = {"at", "action", "for"}
_FIELDS: Mapping[str, set[str]] = {
    "move": {"symbol", "market", "pct", "price", "over", "step", "both"},
    "funding": {"symbol", "rate"},
    "fault": {"fault"},
    "lag": {"user_stream_ms"},
    "trade": {"symbol", "market", "side", "price", "quantity"},
}


class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message names the field."""


@dataclass(frozen=True, slots=True)
class Event:
    index: int
    at: float
    action: str
    spec: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"events[{self.index}]"


@dataclass(slots=True)
class Scenario:
    name: str
    events: list[Event]
    funding_interval: float | None = None
    perp_wallet: Decimal | None = None  # the USDⓈ-M wallet's USDT at start (None: the emulator's default)
    leverage: int | None = None  # every perp's leverage at start (None: the emulator's default)
    log: list[dict[str, Any]] = field(default_factory=list)  # what has been played, in order

    @classmethod
    def load(cls, path: Path) -> Scenario:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ScenarioError(f"scenario: cannot read {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"scenario: {path} is not valid TOML: {exc}") from None
        return cls.parse(data)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Scenario:
        unknown = set(data) - {"name", "description", "emulator", "events"}
        if unknown:
            raise ScenarioError(f"scenario: unknown key(s) {sorted(unknown)}")
        emulator = data.get("emulator", {})
        if not isinstance(emulator, dict) or set(emulator) - {"funding_interval", "perp_wallet", "leverage"}:
            raise ScenarioError("emulator: a table with at most 'funding_interval', 'perp_wallet' and 'leverage'")
        interval = emulator.get("funding_interval")
        if interval is not None and (not _number(interval) or interval <= 0):
            raise ScenarioError(f"emulator.funding_interval: must be a number of seconds > 0, got {interval!r}")
        wallet = emulator.get("perp_wallet")
        wallet = None if wallet is None else parse_wallet(wallet, "emulator.perp_wallet")
        raw = data.get("events", [])
        if not isinstance(raw, list):
            raise ScenarioError("events: must be an array of tables ([[events]])")
        events = [_event(i, e) for i, e in enumerate(raw)]
        leverage = emulator.get("leverage")
        if leverage is not None and (not isinstance(leverage, int) or isinstance(leverage, bool)
                                     or not 1 <= leverage <= w.BRACKETS[0][0]):  # fmt: skip
            raise ScenarioError(f"emulator.leverage: must be a whole number 1..{w.BRACKETS[0][0]}, got {leverage!r}")
        name = str(data.get("name", "scenario"))
        return cls(name, events, None if interval is None else float(interval), wallet, leverage)

    def install(self, emulator: Emulator) -> None:
        """Check every event against this emulator's markets, set the perp wallet (if the scenario gives one),
        then schedule the events from now."""
        for event in self.events:
            _check_against(emulator, event)
        if self.perp_wallet is not None:
            set_perp_wallet(emulator, self.perp_wallet)
        if self.leverage is not None:
            for m in emulator.markets(MarketKind.LINEAR):
                emulator.set_leverage(m, self.leverage)
        for event in self.events:
            emulator.call_later(event.at, functools.partial(self._fire, emulator, event))
        self.log = emulator.scenario_log  # GET /_emulator/state shows what has been played

    def _fire(self, emulator: Emulator, event: Event) -> None:
        spec, now = event.spec, emulator.now_ms()
        entry: dict[str, Any] = {"event": event.index, "action": event.action, "time": now}
        if event.action == "move":
            m = _market(emulator, event)
            start = emulator.driver.mid_of(m)
            target = Decimal(str(spec["price"])) if "price" in spec else start * (1 + _dec(spec["pct"]) / 100)
            over, step = float(spec.get("over", 0)), float(spec.get("step", 0.5))
            steps = max(1, round(over / step)) if over > 0 else 1
            both = bool(spec.get("both", False))
            for k in range(1, steps + 1):
                price = start + (target - start) * k / steps
                delay = over * k / steps if over > 0 else 0.0
                emulator.call_later(delay, functools.partial(_move, emulator, m, price, both))
            entry.update({"symbol": m.venue_symbol, "from": str(start), "to": str(target.quantize(m.tick_size))})
        elif event.action == "funding":
            m = _market(emulator, event, MarketKind.LINEAR)
            if str(spec["rate"]).lower() == "auto":
                emulator.data.funding_override.pop(m.symbol, None)
            else:
                emulator.data.funding_override[m.symbol] = _dec(spec["rate"])
            entry.update({"symbol": m.venue_symbol, "rate": str(spec["rate"])})
        elif event.action == "fault":
            fault_spec = dict(spec["fault"])
            if "for" in spec:
                fault_spec["count"] = -1
            fault = emulator.add_fault(fault_spec)
            if "for" in spec and fault in emulator.faults:
                emulator.call_later(float(spec["for"]), lambda: _remove(emulator, fault))
            entry.update({"fault": fault.to_json()})
        elif event.action == "lag":
            previous = emulator.user_stream_lag
            emulator.user_stream_lag = float(spec["user_stream_ms"]) / 1000
            if "for" in spec:
                emulator.call_later(float(spec["for"]), lambda: setattr(emulator, "user_stream_lag", previous))
            entry.update({"user_stream_ms": spec["user_stream_ms"]})
        elif event.action == "trade":
            m = _market(emulator, event)
            emulator.trade(m, Side(spec["side"]), _dec(spec["price"]), _dec(spec["quantity"]))
            entry.update({"symbol": m.venue_symbol, "side": spec["side"], "price": str(spec["price"])})
        self.log.append(entry)

    def describe(self) -> list[str]:
        return [f"t+{e.at:g}s {e.action} {_summary(e)}" for e in self.events]


def parse_wallet(value: Any, key: str) -> Decimal:
    """A USDT amount > 0 (a TOML string such as "400", or a number); errors name `key`."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ScenarioError(f"{key}: {value!r} is not a number of USDT") from None
    if isinstance(value, bool) or not amount.is_finite() or amount <= 0:
        raise ScenarioError(f"{key}: must be an amount of USDT > 0, got {value!r}")
    return amount


def set_perp_wallet(emulator: Emulator, amount: Decimal) -> None:
    """Set the USDⓈ-M wallet's USDT to `amount` (at start, before any client trades)."""
    emulator.engine.credit_perp_wallet(amount - emulator.engine.perp_wallet())


def _event(index: int, raw: Any) -> Event:
    label = f"events[{index}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{label}: must be a table")
    action = raw.get("action")
    if action not in ACTIONS:
        raise ScenarioError(f"{label}.action: {action!r} is not one of {list(ACTIONS)}")
    unknown = set(raw) - _COMMON - _FIELDS[action]
    if unknown:
        raise ScenarioError(f"{label}: unknown key(s) {sorted(unknown)} for action {action!r}")
    at = raw.get("at")
    if not _number(at) or at < 0:
        raise ScenarioError(f"{label}.at: must be a number of seconds >= 0, got {at!r}")
    if "for" in raw and (not _number(raw["for"]) or raw["for"] <= 0):
        raise ScenarioError(f"{label}.for: must be a number of seconds > 0, got {raw['for']!r}")
    if action in ("move", "funding", "trade") and not isinstance(raw.get("symbol"), str):
        raise ScenarioError(f"{label}.symbol: a venue symbol such as 'ETHUSDT' is required")
    if "market" in raw and raw["market"] not in ("spot", "linear"):
        raise ScenarioError(f"{label}.market: {raw['market']!r} is not one of ['linear', 'spot']")
    if action == "move":
        if ("pct" in raw) == ("price" in raw):
            raise ScenarioError(f"{label}: give exactly one of 'pct' (change of the mid, %) or 'price' (new mid)")
        _checked_dec(raw, "pct" if "pct" in raw else "price", label, positive="price" in raw)
        for name in ("over", "step"):
            if name in raw and (not _number(raw[name]) or raw[name] < 0 or (name == "step" and raw[name] == 0)):
                raise ScenarioError(f"{label}.{name}: must be a number of seconds >= 0, got {raw[name]!r}")
    elif action == "funding":
        if str(raw.get("rate", "")).lower() != "auto":
            rate = _checked_dec(raw, "rate", label)
            if abs(rate) > Decimal("0.03"):
                raise ScenarioError(f"{label}.rate: {rate} is beyond +-3 % per interval")
    elif action == "fault":
        if not isinstance(raw.get("fault"), dict):
            raise ScenarioError(f"{label}.fault: an inline table such as {{ fault = 'http_error', status = 503 }}")
        try:
            parse_fault({**raw["fault"], **({"count": -1} if "for" in raw else {})})
        except ValueError as exc:
            raise ScenarioError(f"{label}.fault.{exc}") from None
    elif action == "lag":
        lag = raw.get("user_stream_ms")
        if not _number(lag) or lag < 0:
            raise ScenarioError(f"{label}.user_stream_ms: must be a number of milliseconds >= 0, got {lag!r}")
    elif action == "trade":
        if raw.get("side") not in ("buy", "sell"):
            raise ScenarioError(f"{label}.side: {raw.get('side')!r} is not one of ['buy', 'sell'] (the aggressor)")
        _checked_dec(raw, "price", label, positive=True)
        _checked_dec(raw, "quantity", label, positive=True)
    return Event(index, float(at), action, dict(raw))


def _check_against(emulator: Emulator, event: Event) -> None:
    if "symbol" in event.spec:
        _market(emulator, event, MarketKind.LINEAR if event.action == "funding" else None)


def _market(emulator: Emulator, event: Event, kind: MarketKind | None = None) -> Any:
    kind = kind or MarketKind(event.spec.get("market", "linear"))
    try:
        return emulator.market(kind, event.spec["symbol"])
    except w.WireError:
        ids = [m.venue_symbol for m in emulator.markets(kind)]
        raise ScenarioError(f"{event.label}.symbol: {event.spec['symbol']!r} is not one of {ids}") from None


def _move(emulator: Emulator, market: Any, price: Decimal, both: bool) -> None:
    emulator.move(market, price.quantize(market.tick_size), both=both)


def _remove(emulator: Emulator, fault: Any) -> None:
    emulator.faults = [f for f in emulator.faults if f is not fault]


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _dec(value: Any) -> Decimal:
    return Decimal(str(value))


def _checked_dec(raw: Mapping[str, Any], name: str, label: str, *, positive: bool = False) -> Decimal:
    value = raw.get(name)
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ScenarioError(f"{label}.{name}: {value!r} is not a number") from None
    if value is None or isinstance(value, bool) or not number.is_finite() or (positive and number <= 0):
        raise ScenarioError(f"{label}.{name}: {value!r} is not a {'positive ' if positive else ''}number")
    return number


def _summary(event: Event) -> str:
    return " ".join(f"{k}={v}" for k, v in event.spec.items() if k not in ("at", "action"))
