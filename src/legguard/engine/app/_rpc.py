"""The operator's commands, implemented once: status, halt, resume, close, stop over a running `Engine`.

Every transport (the control socket, the `run` dashboard and status lines, alerts) goes through `Rpc`, so a
command behaves the same whichever way it arrives. Every action is journaled as a `control` row with its
reason and outcome (engine-wide, and per package for closes), so `legguard audit` shows who did what and why.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import trio

from legguard.adapters._redact import SECRETS, scrub
from legguard.engine._engine import Engine, EngineMode
from legguard.engine._observe import HaltSource
from legguard.engine.journal import package_pnl
from legguard.fsm import State

CONTROL: str = "control"  # journal fact kind of every operator action
MAX_LIVE_LISTED = 50  # status lists at most this many live packages (the oldest first)


class RpcError(Exception):
    """The command was refused (unknown package, bad arguments); the message says why."""


def _dec(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


class Rpc:
    """Operator commands over one running engine. `stop` sets the run's stop event (the same graceful path
    as SIGTERM); `extra` adds sections to `status` (e.g. the venue's request budget)."""

    def __init__(
        self,
        engine: Engine,
        stop: trio.Event,
        *,
        db: str = "",
        extra: Mapping[str, Callable[[], Any]] | None = None,
    ) -> None:
        self.engine = engine
        self.stop_event = stop
        self.db = db
        self.extra = dict(extra or {})
        self._closing: set[str] = set()  # close requested (the request may still sit in the mailbox)

    # --- dispatch (transports call this) --------------------------------------------------------------

    def handle(self, command: str, args: Mapping[str, Any], via: str) -> Any:
        match command:
            case "status":
                return self.status()
            case "halt":
                return self.halt(_reason(args), via)
            case "resume":
                return self.resume(_reason(args), via)
            case "close":
                ids = args.get("ids") or []
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    raise RpcError("close: 'ids' must be a list of package ids")
                pair = args.get("pair")
                if pair is not None and not isinstance(pair, str):
                    raise RpcError("close: 'pair' must be a symbol")
                return self.close(ids, pair, bool(args.get("all", False)), _reason(args), via)
            case "stop":
                return self.stop(_reason(args), via)
        raise RpcError(f"unknown command {command!r}; known: status, halt, resume, close, stop")

    # --- actions --------------------------------------------------------------------------------------

    def _journal(self, action: str, reason: str, via: str, result: str, package_id: str | None = None) -> None:
        payload = {"action": action, "reason": reason, "via": via, "result": result}
        self.engine.journal.record(CONTROL, package_id, payload, trio.current_time())

    def halt(self, reason: str, via: str = "rpc") -> dict[str, Any]:
        reason = reason or "operator halt"
        done = self.engine.halt(reason, HaltSource.OPERATOR)
        result = "halted" if done else f"not halted: engine is {self.engine.mode.value}"
        self._journal("halt", reason, via, result)
        return {"done": done, "result": result, "mode": self.engine.mode.value}

    def resume(self, reason: str, via: str = "rpc") -> dict[str, Any]:
        reason = reason or "operator resume"
        done = self.engine.resume(reason)
        result = "resumed" if done else f"not resumed: engine is {self.engine.mode.value}"
        self._journal("resume", reason, via, result)
        return {"done": done, "result": result, "mode": self.engine.mode.value}

    def close(
        self, ids: list[str], pair: str | None, everything: bool, reason: str, via: str = "rpc"
    ) -> dict[str, Any]:
        """Close hedged packages through the engine's close path (hedged -> unwinding -> flat). Packages in
        other states are reported as skipped: the kill switch already owns the ones in flight."""
        if sum((bool(ids), pair is not None, everything)) != 1:
            raise RpcError("close: give package ids, or a pair, or all -- exactly one of them")
        reason = reason or "operator close"
        handles = self.engine.handles
        self._closing.intersection_update(handles)  # released ones are flat: nothing left to remember
        if ids:
            # A flat package released from memory is known (and skipped as flat), not unknown.
            unknown = [i for i in ids if i not in handles and i not in self.engine.retired]
            if unknown:
                raise RpcError(f"close: unknown package id(s) {', '.join(unknown)} (see `legguard status`)")
            targets = list(ids)
        elif pair is not None:
            known = {s for h in handles.values() for s in (h.core.plan.spot.symbol, h.core.plan.perp.symbol)}
            targets = [pid for pid, h in handles.items() if pair in (h.core.plan.spot.symbol, h.core.plan.perp.symbol)]
            if not targets and pair not in known and pair not in self.engine.markets:
                raise RpcError(f"close: no pair {pair!r}; symbols: {', '.join(sorted(known)) or '(no packages yet)'}")
        else:
            targets = list(handles)
        closing: list[str] = []
        skipped: dict[str, str] = {}
        for pid in targets:
            h = handles.get(pid)
            if h is None:  # released: flat
                skipped[pid] = State.FLAT.value
                continue
            state = h.core.state
            if pid in self._closing and state is not State.FLAT:
                if ids:
                    skipped[pid] = "closing already"
            elif state is State.HEDGED and not h.done.is_set():
                if not self.engine.request_close(pid, reason, policy="operator"):
                    skipped[pid] = "closing already" if h.exit_policy is not None else "engine stopping"
                    continue
                self._journal("close", reason, via, "closing", pid)
                closing.append(pid)
                self._closing.add(pid)
            elif ids:  # named explicitly: say why not
                skipped[pid] = state.value
        what = ",".join(ids) if ids else (f"pair {pair}" if pair is not None else "all")
        self._journal("close", reason, via, f"{what}: {len(closing)} closing, {len(skipped)} skipped")
        return {"closing": closing, "skipped": skipped, "done": bool(closing) or not ids}

    def stop(self, reason: str, via: str = "rpc") -> dict[str, Any]:
        reason = reason or "operator stop"
        self._journal("stop", reason, via, "stopping")
        self.stop_event.set()
        return {"done": True, "result": "stopping: entries cancelled, unwinds finished, hedges kept"}

    # --- status ---------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        e = self.engine
        now = trio.current_time()
        states: Counter[str] = Counter()
        exposure: dict[str, dict[str, Decimal]] = {}
        live: list[dict[str, Any]] = []
        unknown = 0
        # Open packages marked to market at the live book mids (`PackagePnl.value_at`): cheap, open ones only.
        mids = {sym: (b.best_bid + b.best_ask) / 2 for sym, b in e.books.items() if b.best_bid and b.best_ask}
        unrealized = funding = Decimal(0)
        unpriced = 0
        for pid, h in e.handles.items():
            core = h.core
            state = core.state
            states[state.value] += 1
            if state is State.FLAT:
                continue
            value = package_pnl(core, h.funding).value_at(mids)
            if value is None:
                unpriced += 1
            else:
                unrealized += value
            funding += h.funding
            exp = core.exposure()
            unknown += exp.unknown
            asset = _base(e, core.plan.spot.symbol)
            a = exposure.setdefault(asset, {"net": Decimal(0), "gross": Decimal(0), "naked": Decimal(0)})
            a["net"] += exp.net
            a["gross"] += abs(exp.spot) + abs(exp.perp)
            a["naked"] += core.unmatched()
            if state is not State.HEDGED and len(live) < MAX_LIVE_LISTED:
                live.append(
                    {
                        "id": pid,
                        "state": state.value,
                        "age_s": round(now - h.created_at, 3),
                        "pair": core.plan.spot.symbol,
                        "spot": _dec(exp.spot),
                        "perp": _dec(exp.perp),
                        "unknown": exp.unknown,
                        "naked_s": None if h.naked_since is None else round(now - h.naked_since, 3),
                    }
                )
        if len(e.retired):  # flat packages released from memory
            states[State.FLAT.value] += len(e.retired)
        b = e.config.breaker
        halt: dict[str, Any] | None = None
        if e.mode is EngineMode.HALTED:
            halt = {
                "reason": e.halt_reason,
                "source": None if e.halt_source is None else e.halt_source.value,
                "resume_in_s": None if e.resume_at is None else round(max(e.resume_at - now, 0.0), 3),
            }
        out: dict[str, Any] = {
            "mode": e.mode.value,
            "halt": halt,
            "uptime_s": round(now - e.started_at, 3),
            "wall_time": time.time(),
            "venue": {
                "name": e.venue.name,
                "healthy": not e.outage.down,
                "detail": e.outage.last_error if e.outage.down else "",
                "down_s": None if e.outage.down_since is None else round(now - e.outage.down_since, 3),
                "outages": e.outage.outages,
                "downtime_s": round(e.outage.downtime, 3),
                "order_stream_age_s": None if e.stream_last_message is None else round(now - e.stream_last_message, 3),
                "stream_reconnects": e.stats.stream_drops,
                "book_age_s": {s: round(now - b_.timestamp, 3) for s, b_ in sorted(e.books.items())},
                "paused_s": round(max(e.paused_until - now, 0.0), 3),
            },
            "packages": {
                "total": e.packages_total,
                "by_state": dict(sorted(states.items())),
                "live": len(e.live),
                "unknown_exposure": unknown,
            },
            "exposure": {a: {k: _dec(v) for k, v in x.items()} for a, x in sorted(exposure.items())},
            "pnl": {
                "unrealized": _dec(unrealized),
                "funding": _dec(funding),
                "unpriced": unpriced,
                "marks": "book mids",
            },
            "live": live,
            "breaker": {
                "orphans_in_window": e.breaker_count(now),
                "max_orphans": b.max_orphans,
                "window_s": b.window,
                "resume_after_s": b.resume_after,
                "auto_resumes": e.stats.auto_resumes,
            },
            "deadman": e.deadman.status(now),
            "margin": {"enabled": e.config.risk.margin_guard, **e.margin_guard.status(now)},
            "stats": {
                "orphan_events": e.stats.orphan_events,
                "unwound": e.stats.unwound,
                "halts": e.stats.halts,
                "faults": e.stats.faults,
                "unwind_overdue": e.stats.unwind_overdue,
                "max_naked_ms": round(e.stats.max_naked * 1000, 3),
            },
            "errors": [
                {"wall_time": wall, "age_s": round(now - at, 3), "text": scrub(text, SECRETS, limit=None)}
                for at, wall, text in list(e.stats.errors)[-5:]
            ],
            "journal": {"db": self.db, "journal_id": e.journal.journal_id, "head_seq": e.journal.head[0]},
        }
        for name, provide in self.extra.items():
            out[name] = provide()
        return out


def _base(engine: Engine, symbol: str) -> str:
    market = engine.markets.get(symbol)
    return market.base if market is not None else symbol.split("/", 1)[0]


def _reason(args: Mapping[str, Any]) -> str:
    reason = args.get("reason", "")
    if not isinstance(reason, str):
        raise RpcError("'reason' must be text")
    return reason[:500]
