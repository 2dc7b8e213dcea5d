"""docs/emulator.md lists exactly what the emulator serves (generated from its router and stream table), and
documents every fault kind, scenario action and control endpoint it has."""

from __future__ import annotations

from pathlib import Path

from legguard.adapters.emulator._emulator import FAULT_KINDS, Emulator
from legguard.adapters.emulator._rest import make_app
from legguard.adapters.emulator._routes import BEGIN, END, routes_markdown, served_routes
from legguard.adapters.emulator._scenario import ACTIONS

DOC = Path(__file__).resolve().parents[3] / "docs" / "emulator.md"


def test_the_served_list_is_byte_identical_to_the_routing() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert documented == routes_markdown(), "regenerate with: legguard emulator --routes"


def test_the_generated_list_names_every_route() -> None:
    app = make_app(Emulator(autoclock=False))
    listed = routes_markdown(app)
    for method, path in served_routes(app):
        assert f" {path}`" in listed and method in listed, (method, path)
    # The endpoints are among them.
    for path in ("/api/v3/ticker/24hr", "/fapi/v1/markPriceKlines", "/fapi/v1/income", "/sapi/v1/asset/transfer"):
        assert f" {path}`" in listed


def test_every_fault_action_and_control_endpoint_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for fault in FAULT_KINDS:
        assert f"| `{fault}` |" in text, fault
    for action in ACTIONS:
        assert f'action = "{action}"' in text, action
    control = [p for _, p in served_routes(make_app(Emulator(autoclock=False))) if p.startswith("/_emulator/")]
    body = text[: text.index(BEGIN)]
    for path in control:
        name = path.removeprefix("/_emulator/")
        assert f"/{name}" in body, path
