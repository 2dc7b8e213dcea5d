"""`legguard audit list|show|verify`: read the journal (never write it) and prove what the engine did."""

from __future__ import annotations

import csv
import datetime as dt
import enum
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from legguard.engine.app._config import ConfigError, load_config
from legguard.engine.journal import (
    FUNDING,
    GROUPINGS,
    Mark,
    PackagePnl,
    ReplayMismatch,
    aggregate,
    dust,
    journal_marks,
    ledger,
    package_pnl,
    replay_package,
    unattributed_funding,
)
from legguard.engine.journal._anchors import (
    AnchorCheck,
    default_anchors_path,
    load_key,
    parse_public_key,
    public_key_text,
    verify_anchors,
)
from legguard.engine.journal._binding import bound_identity
from legguard.engine.journal._pnl import funding_amount
from legguard.engine.journal._replay import verify as verify_journal
from legguard.engine.journal._store import Journal, JournalError, JournalNotFound, UnknownPackage, summarize
from legguard.fsm._events import LegRole
from legguard.fsm._table import State

audit_app = typer.Typer(
    name="audit",
    help="Inspect and verify the audit journal (read-only).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

DbOption = Annotated[Path, typer.Option("--db", help="Journal file (SQLite).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DEFAULT_DB = Path("legguard.db")

# Exit codes: 0 ok, 1 the journal answered "no" (verify failed, unknown package), 2 nothing to read.
EXIT_PROBLEMS = 1
EXIT_NO_JOURNAL = 2


# Piped into a file or `less`, rich would squeeze wide tables to 80 columns and cut every cell.
PIPE_WIDTH = 240


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)  # paths must stay copy-pasteable


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH if not sys.stdout.isatty() else None)


def _fail(message: str, code: int) -> typer.Exit:
    _err().print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def _guard(action: Callable[[], Any]) -> Any:
    """Run `action`, turning a missing or foreign journal into a clear message and exit 2 (no traceback)."""
    try:
        return action()
    except JournalNotFound as exc:
        raise _fail(f"{exc} (pass --db PATH; the engine writes ./legguard.db by default)", EXIT_NO_JOURNAL) from None
    except JournalError as exc:
        raise _fail(str(exc), EXIT_NO_JOURNAL) from None


@contextmanager
def _reader(db: Path) -> Iterator[Journal]:
    journal: Journal = _guard(lambda: Journal.open(db, readonly=True))
    try:
        yield journal
    finally:
        journal.close()


def _when(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, tz=dt.UTC).strftime("%m-%d %H:%M:%S")


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


@audit_app.command("list")
def list_packages(
    db: DbOption = DEFAULT_DB,
    state: Annotated[
        State | None, typer.Option("--state", help="Only packages in this state.", case_sensitive=False)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Every package: state, exposure, created, last transition."""
    with _reader(db) as journal:
        rows = journal.packages(state)
        journal_id = journal.journal_id
        control = [r for r in journal.engine_log() if r.kind == "control"]
        bound = bound_identity(journal)
    if as_json:
        binding = None if bound is None else bound.to_dict()
        _emit_json({"journal_id": journal_id, "binding": binding, "packages": [r.to_dict() for r in rows],
                    "control": [r.to_dict() for r in control]})  # fmt: skip
        return
    venue = "not bound to a venue" if bound is None else f"venue {bound.describe()}"
    title = f"journal {journal_id} ({venue}): {len(rows)} package(s)" + (f" in {state.value}" if state else "")
    table = Table(title=escape(title))
    table.add_column("package", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("spot", justify="right")
    table.add_column("perp", justify="right")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("last transition", overflow="fold")
    for r in rows:
        unknown = " [yellow]?[/yellow]" if r.exposure.unknown else ""
        table.add_row(
            escape(r.package_id),
            r.state.value,
            f"{r.exposure.spot}{unknown}",
            f"{r.exposure.perp}{unknown}",
            _when(r.created_wall),
            escape(r.last_transition or "-"),
        )
    _out().print(table)
    if any(r.exposure.unknown for r in rows):
        _out().print("[yellow]?[/yellow] some order's outcome is unknown: exposure is a lower bound")
    if control:
        last = control[-1]
        what = escape(summarize(last.kind, last.payload))
        _out().print(
            f"{len(control)} operator action(s); last {_when(last.wall_time)} {what}"
            " — all engine events: `legguard audit show engine`"
        )


@audit_app.command("show")
def show(
    package_id: Annotated[str, typer.Argument(help="Package id (see `legguard audit list`).")],
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """One package's timeline: every journaled row, in order. `engine` shows the engine's own rows (start,
    stop, halts, resumes, operator actions, outages)."""
    if package_id == ENGINE:
        _show_engine(db, as_json)
        return
    with _reader(db) as journal:
        try:
            package = journal.package(package_id)
        except UnknownPackage:
            known = journal.package_ids()
            hint = f"; known: {', '.join(known[-5:])}" + (" ..." if len(known) > 5 else "") if known else ""
            raise _fail(f"no package {package_id!r} in journal {journal.journal_id}{hint}", EXIT_PROBLEMS) from None
        rows = journal.timeline(package_id)
        try:
            funding = sum((funding_amount(r.payload) for r in rows if r.kind == FUNDING), Decimal(0))
            accounting: PackagePnl | None = package_pnl(replay_package(journal, package_id), funding)
            accounting_problem = ""
        except (ReplayMismatch, KeyError, ValueError, ArithmeticError) as exc:
            accounting, accounting_problem = None, str(exc)
        # Mark-to-market of what the package holds, at the journal's last known prices (no live marks here).
        marks = journal_marks(journal) if accounting is not None and accounting.state is not State.FLAT else {}
    mtm = _mark_to_market(accounting, marks)
    if as_json:
        _emit_json({"package": package.to_dict(), "timeline": [r.to_dict() for r in rows],
                    "pnl": None if accounting is None else accounting.to_dict() | mtm})  # fmt: skip
        return
    out = _out()
    e = package.exposure
    closed_by = next((r.payload.get("policy") for r in rows if r.kind == "exit"), None)
    out.print(
        f"[bold]{escape(package_id)}[/bold]  state [bold]{package.state.value}[/bold]  spot {e.spot}"
        + (f" (+{package.plan.sweep} swept-in dust)" if package.plan.sweep else "")
        + f"  perp {e.perp}"
        + ("  [yellow](outcome unknown: lower bound)[/yellow]" if e.unknown else "")
        + (f"  closed by [bold]{escape(str(closed_by))}[/bold]" if closed_by else ""),
    )
    plan = package.plan
    if plan.spot.amount is not None and (plan.spot.fee_rate or plan.sweep):
        out.print(f"exact hedge: spot buy {plan.spot.amount} (fee {plan.spot.fee_rate} kept in base) plans to hold "
                  f"{plan.spot_held} against the {plan.quantity} short")  # fmt: skip
    out.print(
        f"execution [bold]{plan.style.value}[/bold]  "
        + "  ".join(
            f"{role.value} leg {escape(plan.leg(role).symbol)}: {plan.execution(role).value}" for role in LegRole
        )
    )
    table = Table(show_edge=False)
    table.add_column("seq", justify="right")
    table.add_column("t (s)", justify="right")
    table.add_column("kind")
    table.add_column("detail", overflow="fold")
    # Wall time: a package's rows can span processes (recovery after a crash), whose monotonic clocks are
    # unrelated to each other.
    start = rows[0].wall_time if rows else 0.0
    for r in rows:
        detail = escape(summarize(r.kind, r.payload))
        if r.kind == "transition":
            detail = f"[bold]{detail}[/bold]"
        table.add_row(str(r.seq), f"{r.wall_time - start:+.3f}", r.kind, detail)
    out.print(table)
    if accounting is None:
        out.print(f"[yellow]no accounting: the journal does not replay ({escape(accounting_problem)})[/yellow]")
    else:
        out.print(_accounting_table(accounting))
        if mtm:
            used = ", ".join(f"{escape(sym)} {m['price']} ({m['source']}{_seen(m)})" for sym, m in mtm["marks"].items())
            value = mtm["unrealized"]
            shown = _money(Decimal(value)) if value is not None else "unknown (the venue bought back part of the short)"
            out.print(f"mark-to-market (open): {shown}")
            out.print(f"  at the journal's last known prices, not live marks: {used or 'none journaled'}")


def _seen(mark: dict[str, Any]) -> str:
    return f", {_when(mark['wall_time'])} UTC" if mark.get("wall_time") is not None else ""


def _mark_to_market(p: PackagePnl | None, marks: dict[str, Mark]) -> dict[str, Any]:
    """For an open package: its value at the given marks (`PackagePnl.value_at`) and the marks used."""
    if p is None or p.state is State.FLAT:
        return {}
    used = {s: marks[s] for s in (p.spot.symbol, p.perp.symbol) if s in marks}
    value = p.value_at({s: m.price for s, m in used.items()})
    return {"unrealized": None if value is None else str(value),
            "marks": {s: {"price": str(m.price), "source": m.source, "wall_time": m.wall_time}
                      for s, m in used.items()}}  # fmt: skip


def _parse_marks(values: list[str] | None) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for text in values or []:
        symbol, sep, price = text.partition("=")
        try:
            value = Decimal(price.strip())
        except ArithmeticError:
            value = Decimal("NaN")
        if not sep or not symbol.strip() or not value.is_finite() or value <= 0:
            raise typer.BadParameter(f"{text!r} is not SYMBOL=PRICE with a price > 0 (e.g. ETH/USDT=3000)",
                                     param_hint="--mark")  # fmt: skip
        out[symbol.strip()] = value
    return out


def _money(value: Decimal | None) -> str:
    """For reading: 4 decimals (JSON and CSV carry the exact figures)."""
    return "-" if value is None else f"{value.quantize(QUOTE_DISPLAY):f}"


def _accounting_table(p: PackagePnl) -> Table:
    """Per leg: entry and exit VWAP, fees by currency, slippage; then funding, dust and realized P&L."""
    table = Table(title=f"accounting ({p.state.value})", show_edge=False)
    for column in ("leg", "entry qty @ vwap", "exit qty @ vwap", "cash", "fees (quote)", "fees by currency",
                   "slippage"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("leg", "fees by currency") else "right")
    for leg in (p.spot, p.perp):
        table.add_row(
            f"{leg.role.value} {escape(leg.symbol)}",
            f"{leg.entry_qty} @ {_money(leg.entry_vwap)}",
            f"{leg.exit_qty} @ {_money(leg.exit_vwap)}",
            _money(leg.cash),
            _money(leg.fees_quote),
            ", ".join(f"{v} {k}" for k, v in sorted(leg.fees.items())) or "-",
            _money(leg.slippage),
        )
    table.caption = (
        f"funding {_money(p.funding)}  residual spot {p.residual_base} (~{_money(p.residual_value)})  "
        f"realized {_realized_text(p)}"
    )
    return table


QUOTE_DISPLAY = Decimal("0.0001")


def _realized_text(p: PackagePnl) -> str:
    if p.realized is not None:
        return _money(p.realized)
    if p.venue_reduced:
        return f"unknown: the venue bought back {p.venue_reduced} of the short itself (liquidation/ADL)"
    return "open (hedged or unwinding)"


class Grouping(enum.StrEnum):
    PAIR = "pair"
    DAY = "day"
    EXIT_REASON = "exit-reason"


assert tuple(g.value for g in Grouping) == GROUPINGS


def _parse_since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD) or ISO time", param_hint="--since") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@audit_app.command("pnl")
def pnl(
    db: DbOption = DEFAULT_DB,
    by: Annotated[Grouping, typer.Option("--by", help="Group by pair, day (UTC) or exit reason.")] = Grouping.PAIR,
    since: Annotated[
        str | None, typer.Option("--since", help="Only packages opened at or after this UTC date/time.")
    ] = None,
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout (one row per group, then the total).")] = False,
    mark: Annotated[
        list[str] | None,
        typer.Option(
            "--mark",
            help="SYMBOL=PRICE to value what is still held (hedges, dust) at; repeatable. "
            "Default: the journal's last fill price on each symbol.",
        ),
    ] = None,
) -> None:
    """Realized P&L, fees, funding and slippage per pair, day or exit reason, from the journal's facts; open
    packages marked to market (at --mark prices or the journal's last fill prices)."""
    since_wall = _parse_since(since)
    given = _parse_marks(mark)
    with _reader(db) as journal:
        try:
            every = ledger(journal)
        except ReplayMismatch as exc:
            raise _fail(f"{exc} (run `legguard audit verify`)", EXIT_PROBLEMS) from None
        journal_id = journal.journal_id
        marks = journal_marks(journal) | {s: Mark(p, "given") for s, p in given.items()}
        nobodys = unattributed_funding(journal, since_wall)
    entries = [e for e in every if since_wall is None or e.opened_wall >= since_wall]
    rows = aggregate(entries, by.value, {s: m.price for s, m in marks.items()})
    dust_rows = dust(every)  # the desk's, whatever the period
    if as_json:
        _emit_json({"journal_id": journal_id, "by": by.value, "groups": rows, "dust": dust_rows,
                    "marks": {s: {"price": str(m.price), "source": m.source, "wall_time": m.wall_time}
                              for s, m in sorted(marks.items())},
                    "funding_unattributed": str(nobodys),
                    "packages": [e.pnl.to_dict() | {"exit_reason": e.exit_reason} for e in entries]})  # fmt: skip
        return
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    table = Table(title=f"journal {journal_id}: P&L by {by.value}, in quote (realized: flat packages only)")
    headers = {"key": by.value, "packages": "pkgs", "dust_value": "dust"}
    for column in rows[0]:
        table.add_column(headers.get(column, column), justify="left" if column == "key" else "right")
    for row in rows:
        counts = ("key", "packages", "flat", "open", "unpriced")
        cells = [str(v) if k in counts else _money(Decimal(v)) for k, v in row.items()]
        table.add_row(*(escape(c) for c in cells), style="bold" if row["key"] == "total" else None)
    held = ", ".join(f"{s} {m.price} ({m.source})" for s, m in sorted(marks.items())) or "none journaled"
    table.caption = (f"unrealized / value: what is still held (hedges, dust) at {held}; unpriced packages "
                     f"are in neither; funding while no package held the short: {_money(nobodys)}")  # fmt: skip
    _out().print(table)
    if dust_rows:
        dust_table = Table(title="dust: base the desk holds beyond its open packages (swept into the next package)")
        for column in ("asset", "quantity", "mark", "value"):
            dust_table.add_column(column, justify="left" if column == "asset" else "right")
        for d in dust_rows:
            value = "-" if d["value"] is None else _money(Decimal(d["value"]))
            dust_table.add_row(escape(d["asset"]), d["quantity"], d["mark"] or "-", value)
        _out().print(dust_table)


ENGINE = "engine"


def _show_engine(db: Path, as_json: bool) -> None:
    with _reader(db) as journal:
        rows = journal.engine_log()
        journal_id = journal.journal_id
    if as_json:
        _emit_json({"journal_id": journal_id, "engine": [r.to_dict() for r in rows]})
        return
    table = Table(title=f"journal {journal_id}: engine events", show_edge=False)
    table.add_column("seq", justify="right")
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("kind")
    table.add_column("detail", overflow="fold")
    for r in rows:
        detail = escape(summarize(r.kind, r.payload))
        if r.kind == "control" or r.payload.get("event") in ("halted", "resumed", "venue_outage"):
            detail = f"[bold]{detail}[/bold]"
        table.add_row(str(r.seq), _when(r.wall_time), r.kind, detail)
    _out().print(table)


@audit_app.command("verify")
def verify(
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
    anchors: Annotated[
        Path | None,
        typer.Option(
            "--anchors",
            help="Signed anchors file the engine wrote (see docs/audit.md): fail unless the journal still holds "
            "every anchored head, i.e. nothing up to the last anchor was deleted or rewritten.",
        ),
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="The anchor key to trust: 'ed25519:...' (`legguard audit public-key`) or a file holding it. "
            "Without it the key in the anchors file is trusted, which a forger can replace.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The run config: check the anchors where it keeps them (journal.anchors, default <db>.anchors), "
            "pinned to the public half of its journal.anchor_key. --anchors / --public-key override.",
        ),
    ] = None,
) -> None:
    """Check the hash chain and replay every package through the decision core; with --anchors (or --config),
    also that the journal extends every signed anchor. Exit 0 only if OK."""
    pinned = _guard(lambda: parse_public_key(public_key)) if public_key is not None else None
    if config is not None:
        try:
            cfg = load_config(config)
        except ConfigError as exc:
            raise _fail(str(exc), EXIT_NO_JOURNAL) from None
        if anchors is None:
            anchors = cfg.anchors or default_anchors_path(db)
        if pinned is None and cfg.anchor_key is not None and cfg.anchor_key.exists():
            key_path = cfg.anchor_key
            pinned = _guard(lambda: load_key(key_path)).public_key()
    if anchors is not None and not anchors.is_file():
        raise _fail(f"no anchors file at {str(anchors)!r}", EXIT_NO_JOURNAL)
    report = _guard(lambda: verify_journal(db))
    check: AnchorCheck | None = None
    if anchors is not None:
        with _reader(db) as journal:
            check = verify_anchors(journal, anchors, pinned)
    ok = report.ok and (check is None or check.ok)
    if as_json:
        _emit_json({**report.to_dict(), "ok": ok, "anchors": None if check is None else check.to_dict()})
    else:
        out = _out()
        summary = f"{report.rows_checked} rows, {report.packages_checked} packages, journal {report.journal_id}"
        if check is not None and not check.ok:
            out.print(f"[red]FAILED[/red] anchors: {escape(check.problem or '')}")
        if report.ok and ok:
            out.print(f"[green]OK[/green] {summary}; head seq {report.head_seq} hash {report.head_hash}")
            if check is not None:
                out.print(f"  {escape(check.summary())}")
            else:
                out.print("  not checked against signed anchors (--anchors): a rewrite of the whole file passes")
        elif not report.ok:
            count = len(report.problems) + report.omitted
            out.print(f"[red]FAILED[/red] {summary}: {count} problem(s), first bad row first")
            for problem in report.problems:
                out.print(f"  - {problem}", markup=False)
            if report.omitted:
                out.print(f"  ... and {report.omitted} more")
    if not ok:
        raise typer.Exit(EXIT_PROBLEMS)


@audit_app.command("public-key")
def public_key_cmd(
    key: Annotated[Path, typer.Option("--key", help="The anchor key file (journal.anchor_key / run --anchor-key).")],
) -> None:
    """Print the public half of the anchor key ('ed25519:...'), to pin with `audit verify --public-key`."""
    if not key.is_file():
        raise _fail(f"--key: no key file at {str(key)!r}", EXIT_NO_JOURNAL)
    private = _guard(lambda: load_key(key))
    typer.echo(public_key_text(private.public_key()))
