"""The served endpoints and streams as a Markdown list, generated from the emulator's own routing (the aiohttp
router of `make_app` and the stream table of `_ws.STREAMS`). docs/emulator.md carries this list between
`<!-- routes:begin -->` and `<!-- routes:end -->`; a test keeps the two identical, and
`legguard emulator --routes` prints it.
"""

from __future__ import annotations

from aiohttp import web

from legguard.domain import MarketKind

from ._emulator import Emulator
from ._rest import make_app
from ._ws import STREAMS

BEGIN, END = "<!-- routes:begin -->", "<!-- routes:end -->"

_GROUPS = (
    ("Spot REST", ("/api/",)),
    ("Spot wallet (SAPI)", ("/sapi/",)),
    ("USDⓈ-M REST", ("/fapi/", "/futures/")),
    ("COIN-M (empty market list, so ccxt's default `load_markets` works)", ("/dapi/",)),
    ("Websocket endpoints", ("/ws", "/stream", "/fstream", "/ws-api")),
    ("Control API (loopback clients only)", ("/_emulator/",)),
)


def served_routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) of every route, HEAD and the catch-all left out."""
    out = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "*") or path == "/{tail}":
            continue
        out.append((route.method, path))
    return sorted(set(out), key=lambda mp: (mp[1], mp[0]))


def routes_markdown(app: web.Application | None = None) -> str:
    routes = served_routes(app if app is not None else make_app(Emulator(autoclock=False)))
    lines = [BEGIN, ""]
    for title, prefixes in _GROUPS:
        group = [(m, p) for m, p in routes if p.startswith(prefixes)]
        if not group:
            continue
        lines += [f"**{title}**", ""]
        by_path: dict[str, list[str]] = {}
        for method, path in group:
            by_path.setdefault(path, []).append(method)
        lines += [f"- `{' '.join(sorted(methods))} {path}`" for path, methods in by_path.items()]
        lines.append("")
    for kind, title in ((MarketKind.SPOT, "Spot streams"), (MarketKind.LINEAR, "USDⓈ-M streams")):
        lines += [f"**{title}** (`<symbol>`: lower-case venue symbol; `<interval>`: 1m ... 1w)", ""]
        lines += [f"- `{name}`" for name, _ in STREAMS[kind]]
        lines.append("")
    lines.append(END)
    return "\n".join(lines)
