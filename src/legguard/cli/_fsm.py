"""`legguard fsm`: print the package lifecycle table (or its mermaid diagram) and run the model checker over
the decision core (`--check`), optionally with edges removed to see what breaks."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from legguard.fsm import (
    PROFILES,
    Bounds,
    CheckReport,
    Counterexample,
    ExecutionStyle,
    UnknownEdge,
    check,
    edges_without,
    parse_edge,
    render_mermaid,
    render_table,
)

_FORMATS = ("table", "mermaid")
_INT_BOUNDS = tuple(f.name for f in fields(Bounds) if f.name not in ("policies", "depth", "accidents", "style"))


def _bad(param: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{param}'")


def parse_bounds(items: list[str]) -> Bounds:
    """`["faults=2", "accidents=none"]` -> Bounds with those fields changed; errors name the item."""
    bounds = Bounds()
    allowed = ", ".join((*_INT_BOUNDS, "accidents", "policies"))
    for item in items:
        name, sep, raw = item.partition("=")
        name, raw = name.strip().replace("-", "_"), raw.strip()
        if not sep or name not in (*_INT_BOUNDS, "accidents", "policies"):
            raise _bad("--bound", f"{item!r} must be NAME=VALUE with NAME one of: {allowed}")
        if name == "policies":
            valid = {p.value: p for p in Bounds().policies}
            chosen = [p.strip() for p in raw.split(",") if p.strip()]
            if not chosen or any(p not in valid for p in chosen):
                raise _bad("--bound", f"{item!r}: policies is a comma list of {', '.join(valid)}")
            bounds = replace(bounds, policies=tuple(valid[p] for p in chosen))
            continue
        if name == "accidents" and raw.lower() == "none":
            bounds = replace(bounds, accidents=None)
            continue
        if not raw.isdigit():
            extra = " (or none)" if name == "accidents" else ""
            raise _bad("--bound", f"{item!r}: {name} must be a whole number >= 0{extra}, got {raw!r}")
        change: dict[str, Any] = {name: int(raw)}
        bounds = replace(bounds, **change)
    return bounds


def fsm(
    format: Annotated[str, typer.Option("--format", help=f"Lifecycle output: {' or '.join(_FORMATS)}.")] = "table",
    check_: Annotated[bool, typer.Option("--check", help="Run the model checker over the decision core.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    depth: Annotated[
        int | None, typer.Option(help="Most environment steps on one path (default: only the bounds limit it).")
    ] = None,
    without: Annotated[
        list[str] | None,
        typer.Option(help="Remove the edge SOURCE:TRIGGER from the table (repeatable), e.g. orphaned:unwind."),
    ] = None,
    bound: Annotated[
        list[str] | None,
        typer.Option(help="Check one profile: the default bounds with NAME=VALUE changed (repeatable)."),
    ] = None,
    jobs: Annotated[int | None, typer.Option(help="Processes for --check (default: one per CPU).")] = None,
    style: Annotated[
        str, typer.Option(help="Execution style of the modelled package: maker-maker | maker-taker | taker-taker.")
    ] = ExecutionStyle.MAKER_MAKER.value,
) -> None:
    """The package lifecycle table, and a model check of every reachable state of the decision core."""
    if format not in _FORMATS:
        raise _bad("--format", f"{format!r} is not one of: {', '.join(_FORMATS)}")
    if depth is not None and depth < 0:
        raise _bad("--depth", f"must be >= 0, got {depth}")
    if jobs is not None and jobs < 1:
        raise _bad("--jobs", f"must be >= 1, got {jobs}")
    removed = list(without or [])
    try:
        edges = edges_without(parse_edge(w) for w in removed)
    except UnknownEdge as exc:
        raise _bad("--without", str(exc)) from None
    styles = [s.value for s in ExecutionStyle]
    if style not in styles:
        raise _bad("--style", f"{style!r} is not one of: {', '.join(styles)}")
    if not check_:
        if bound:
            raise _bad("--bound", "only applies with --check")
        if style != ExecutionStyle.MAKER_MAKER:
            raise _bad("--style", "only applies with --check (every style shares the one lifecycle table)")
        _show_table(edges, format, json_)
        return
    profiles = {"custom": parse_bounds(bound)} if bound else dict(PROFILES)
    profiles = {name: replace(b, style=ExecutionStyle(style)) for name, b in profiles.items()}
    report = check(profiles, without=removed, depth=depth, jobs=jobs)
    if json_:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _summary(Console(soft_wrap=True), report)
    if not report.ok:
        raise typer.Exit(1)


def _show_table(edges: tuple[Any, ...], format: str, json_: bool) -> None:
    if json_:
        rows = [
            {"source": e.source.value, "trigger": e.trigger.value, "dest": e.dest.value, "why": e.why} for e in edges
        ]
        out: dict[str, Any] = {"transitions": rows}
        out[format] = render_table(edges) if format == "table" else render_mermaid(edges)
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(render_table(edges) if format == "table" else render_mermaid(edges), nl=False)


def _summary(console: Console, report: CheckReport) -> None:
    verdict = "[bold green]OK[/]" if report.ok else "[bold red]FAILED[/]"
    removed = f" without {', '.join(report.without)}" if report.without else ""
    console.print(
        f"Model check{removed}: {verdict} — {report.states_explored:,} states, "
        f"{report.transitions_explored:,} transitions, max depth {report.max_depth}, {report.seconds:.1f}s"
    )
    if report.frontier:
        console.print(f"[yellow]{report.frontier:,} states at the depth bound were not expanded[/]")
    props = Table(title="Properties", show_lines=False)
    props.add_column("property")
    props.add_column("violations", justify="right")
    for name, n in report.counts.items():
        props.add_row(name, f"[red]{n}[/]" if n else "0")
    console.print(props)
    runs = Table(title="Explorations (profile x orphan policy)")
    for col in ("profile", "policy", "states", "transitions", "violations", "deadlocks", "seconds"):
        runs.add_column(col, justify="left" if col in ("profile", "policy") else "right")
    for r in report.runs:
        runs.add_row(r["profile"], ",".join(r["policies"]), f"{r['states']:,}", f"{r['transitions']:,}",
                     str(r["violations"]), str(r["deadlocks"]), f"{r['seconds']:.1f}")  # fmt: skip
    console.print(runs)
    bounds = Table(title="Bounds (most times per path; quantity is 2 perp steps)")
    bounds.add_column("bound")
    for profile in report.bounds:
        bounds.add_column(profile, justify="right")
    for name in (f.name for f in fields(Bounds)):
        values = [getattr(b, name) for b in report.bounds.values()]
        shown = [",".join(p.value for p in v) if name == "policies" else "-" if v is None else str(v) for v in values]
        bounds.add_row(name.replace("_", " "), *shown)
    console.print(bounds)
    if report.counterexample is not None:
        _counterexample(console, report.counterexample)


def _counterexample(console: Console, ce: Counterexample) -> None:
    console.print(f"\n[bold red]Counterexample[/] ({ce.prop}, profile {ce.profile}, policy {ce.policy}): {ce.message}")
    for i, step in enumerate(ce.trace, 1):
        console.print(f"{i:3}. [bold]{step.action}[/] -> {step.state}", markup=True, highlight=False)
        for e in step.events:
            shown = {k: v for k, v in e.items() if k != "kind" and v not in (None, "0", "")}
            console.print(f"       event   {e['kind']} {shown}", markup=False, highlight=False)
        for c in step.commands:
            console.print(f"       command {c}", markup=False, highlight=False)
    console.print("Bad state:", markup=False)
    console.print_json(json.dumps(ce.bad_state))
