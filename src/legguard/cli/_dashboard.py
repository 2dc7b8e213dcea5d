"""The operator's view of a running engine, drawn from one `status` answer (the RPC core's dict): the live rich
dashboard (`run` in a terminal, `status --watch`), the one-shot `status` print, and the compact JSON status
line `run` writes outside a terminal."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

MODE_STYLE = {"running": "bold green", "halted": "bold red", "stopping": "bold yellow"}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def headline(s: dict[str, Any]) -> Text:
    mode = s["mode"]
    text = Text()
    text.append(mode.upper(), style=MODE_STYLE.get(mode, "bold"))
    halt = s.get("halt")
    if halt:
        text.append(f" ({halt.get('source')}): {halt.get('reason')}", style="red")
        if halt.get("resume_in_s") is not None:
            text.append(f"; resumes by itself in {_age(halt['resume_in_s'])}", style="yellow")
        else:
            text.append("; `legguard resume` to take new packages", style="dim")
    v = s["venue"]
    text.append(f"   venue {v['name']} ")
    down = f"DOWN for {_age(v.get('down_s'))}: {v['detail']}"
    text.append("up" if v["healthy"] else down, style="green" if v["healthy"] else "bold red")
    text.append(f"   up {_age(s['uptime_s'])}   journal {s['journal']['journal_id']} seq {s['journal']['head_seq']}")
    return text


def render(s: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [headline(s)]

    p = s["packages"]
    states = Table(title=f"packages: {p['total']} ({p['live']} in flight)", title_justify="left", show_edge=False)
    for state in p["by_state"]:
        states.add_column(state, justify="right")
    states.add_row(*(str(n) for n in p["by_state"].values()))
    if not p["by_state"]:
        states.add_column("none yet")
    exposure = Table(title="exposure (base units)", title_justify="left", show_edge=False)
    for name in ("asset", "net", "gross", "naked"):
        exposure.add_column(name, justify="left" if name == "asset" else "right")
    for asset, x in s["exposure"].items():
        naked = x["naked"]
        exposure.add_row(asset, x["net"], x["gross"], Text(naked, style="bold red" if naked != "0" else ""))
    parts += [states, exposure]

    if s["live"]:
        live = Table(title="in flight", title_justify="left", show_edge=False)
        for name in ("package", "pair", "state", "age", "spot", "perp", "naked for"):
            live.add_column(name)
        for row in s["live"][:15]:
            live.add_row(
                row["id"],
                row["pair"],
                row["state"],
                _age(row["age_s"]),
                row["spot"] + ("?" if row["unknown"] else ""),
                row["perp"],
                _age(row["naked_s"]),
            )
        parts.append(live)

    b, d, v = s["breaker"], s["deadman"], s["venue"]
    health = Table(show_header=False, show_edge=False, box=None, padding=(0, 1))
    health.add_column(style="dim")
    health.add_column()
    resume = f", auto-resume after {b['resume_after_s']:g} s" if b["resume_after_s"] else ""
    health.add_row(
        "breaker",
        f"{b['orphans_in_window']} / {b['max_orphans']} orphan events in {b['window_s']:g} s"
        f"{resume}; {b['auto_resumes']} automatic resume(s)",
    )
    books = ", ".join(f"{sym} {_age(age)}" for sym, age in v["book_age_s"].items()) or "-"
    health.add_row(
        "streams",
        f"orders last {_age(v['order_stream_age_s'])} ago, {v['stream_reconnects']} reconnect(s); books {books}",
    )
    if d["supported"]:
        deadlines = d.get("venue_cancels_in_s", {})
        armed = (
            ", ".join(
                f"{sym} (venue cancels in {_age(deadlines[sym])})" if sym in deadlines else sym for sym in d["armed"]
            )
            or "none"
        )
        health.add_row(
            "dead-man",
            f"armed on {armed} (countdown {d['countdown_s']:g} s), {d['heartbeats']} heartbeats, "
            f"{d['failures']} failures",
        )
    else:
        health.add_row("dead-man", "not available on this venue" if d["enabled"] else "disabled")
    margin = s.get("margin")
    if isinstance(margin, dict):
        health.add_row("margin", _margin_line(margin))
    budget = s.get("budget")
    if budget:
        health.add_row("budget", ", ".join(f"{k} {units:.1f}" for k, units in sorted(budget.items())))
    if v.get("paused_s"):
        health.add_row("paused", f"new packages paused {_age(v['paused_s'])} (rate limited)")
    strategy = s.get("strategy")
    if isinstance(strategy, dict):
        health.add_row("strategy", _strategy_line(strategy))
    pnl = s.get("pnl")
    if pnl:
        unpriced = f", {pnl['unpriced']} unpriced (liquidated)" if pnl["unpriced"] else ""
        health.add_row(
            "open P&L",
            f"{_quote(pnl['unrealized'])} mark-to-market at {pnl['marks']} (funding {_quote(pnl['funding'])} "
            f"included){unpriced}; realized: `legguard audit pnl`",
        )
    st = s["stats"]
    health.add_row(
        "so far",
        f"{st['orphan_events']} orphan events, {st['unwound']} unwound, {st['halts']} halts, "
        f"{st['faults']} faults, max naked {st['max_naked_ms']:.1f} ms",
    )
    parts.append(health)
    if s["errors"]:
        errors = Table(title="last errors", title_justify="left", show_edge=False, show_header=False)
        errors.add_column(style="dim", no_wrap=True)
        errors.add_column(overflow="fold")
        for e in s["errors"]:
            when = dt.datetime.fromtimestamp(e["wall_time"], tz=dt.UTC).strftime("%H:%M:%S")
            errors.add_row(when, escape(e["text"]))
        parts.append(errors)
    return Group(*parts)


def _quote(value: str) -> str:
    return f"{Decimal(value).quantize(Decimal('0.0001')):f}"


def status_line(s: dict[str, Any]) -> str:
    """One compact JSON line for logs and journald: what an operator greps for."""
    line = {
        "ts": dt.datetime.fromtimestamp(s["wall_time"], tz=dt.UTC).isoformat(timespec="seconds"),
        "mode": s["mode"],
        "halt_reason": (s.get("halt") or {}).get("reason"),
        "packages": s["packages"]["total"],
        "by_state": s["packages"]["by_state"],
        "in_flight": s["packages"]["live"],
        "exposure": s["exposure"],
        "venue_up": s["venue"]["healthy"],
        "orphan_events": s["stats"]["orphan_events"],
        "breaker": f"{s['breaker']['orphans_in_window']}/{s['breaker']['max_orphans']}",
    }
    return json.dumps(line, separators=(",", ":"))


def _margin_line(m: dict[str, Any]) -> Text | str:
    """The margin guard: its level and the last headroom read (and how old), or the streak of failed reads
    that leaves it blind, in red."""
    if not m.get("enabled"):
        return Text("guard off ([risk] margin_guard = false)")  # Text: a str's "[risk]" would be read as markup
    read = (f"headroom {m['headroom']} read {_age(m['read_age_s'])} ago" if m.get("headroom") is not None
            else "not read yet")  # fmt: skip
    if m.get("failures"):
        return Text(f"BLIND for {_age(m['blind_s'])}: {m['failures']} failed read(s) ({m['last_error']}); "
                    f"level {m['level']}, last {read}", style="bold red")  # fmt: skip
    return f"level {m['level']}, {read}"


def _strategy_line(strategy: dict[str, Any]) -> str:
    """The strategy's name, errors, and per pair its verdict in numbers when it reports them (the funding
    signal: edge against the entry threshold, carry + basis against the close threshold)."""
    text = f"{strategy.get('name')}, {strategy.get('errors', 0)} error(s)"
    last = strategy.get("last")
    if isinstance(last, dict):
        for pair, why in sorted(last.items()):
            if isinstance(why, dict) and {"edge", "min_edge", "hold", "close_below"} <= set(why):
                text += (f"; {pair} edge {why['edge']} (enter >= {why['min_edge']}), "
                         f"hold {why['hold']} (close < {why['close_below']})")  # fmt: skip
            else:
                text += f"; {pair}: {why}"
    return text
