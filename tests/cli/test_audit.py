"""`legguard audit list|show|verify` (cli/_audit.py) against journals written by driving real cores."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal as D
from pathlib import Path

import pytest
from typer.testing import CliRunner

from legguard.cli import app
from legguard.domain import OrderStatus, RejectReason
from legguard.engine.journal._anchors import Anchorer, load_or_create_key, public_key_text
from legguard.engine.journal._store import Journal
from legguard.fsm import Abort, Dispatch, Event, OrderEvent, PackageCore, PackagePlan, State

runner = CliRunner()


def _plan(journal: Journal, n: int) -> PackagePlan:
    return PackagePlan.from_dict(
        {
            "package_id": f"pkg{n}",
            "client_id_prefix": f"lg{journal.journal_id}{n:06d}",
            "quantity": "0.5",
            "spot": {"symbol": "ETH/USDT", "side": "buy", "price": "3000", "step": "0.0001", "dust": "0.0001"},
            "perp": {"symbol": "ETH/USDT:USDT", "side": "sell", "price": "3003", "step": "0.001", "dust": "0.001"},
            "policy": "flatten",
        }
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """pkg1 hedged; pkg2 perp rejected after the spot filled -> unwinding (unwind order in flight);
    pkg3 refused with a reason that looks like rich markup."""
    path = tmp_path / "legguard.db"
    with Journal.open(path) as journal:
        mono = 10.0

        def step(core: PackageCore, event: Event) -> None:
            nonlocal mono
            mono += 0.5
            commands = core.handle(event)
            journal.record_step(core.plan.package_id, event, commands, core.state, core.exposure(), mono)

        cores = []
        for _ in range(3):
            plan = _plan(journal, journal.next_package_number())
            journal.package_created(plan, {"base": "ETH"}, mono)
            cores.append(PackageCore(plan))
        hedged, broken, refused = cores
        p1, p2 = hedged.plan.client_id_prefix, broken.plan.client_id_prefix
        step(hedged, Dispatch())
        step(hedged, OrderEvent(f"{p1}-SE0", OrderStatus.CLOSED, D("0.5"), D("3000")))
        step(hedged, OrderEvent(f"{p1}-PE0", OrderStatus.CLOSED, D("0.5"), D("3003")))
        step(broken, Dispatch())
        step(broken, OrderEvent(f"{p2}-SE0", OrderStatus.CLOSED, D("0.5"), D("3000")))
        step(broken, OrderEvent(f"{p2}-PE0", OrderStatus.REJECTED, reason=RejectReason.POST_ONLY_CROSS))
        journal.record("order_error", "pkg2", {"client_order_id": f"{p2}-PE0", "error": "would cross"}, mono)
        step(refused, Abort(reason="risk [bold]limit[/bold] hit"))
        assert [c.state for c in cores] == [State.HEDGED, State.UNWINDING, State.FLAT]
    return path


def audit(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["audit", *args])
    return result.exit_code, result.stdout, result.stderr


# --- list ---------------------------------------------------------------------------------------------


def test_list_shows_every_package(db: Path) -> None:
    code, out, _ = audit("list", "--db", str(db))

    assert code == 0
    for pid, state in (("pkg1", "hedged"), ("pkg2", "unwinding"), ("pkg3", "flat")):
        line = next(line for line in out.splitlines() if pid in line)
        assert state in line
    assert "lower bound" in out  # pkg2's unwind order is in flight


def test_list_json_shape(db: Path) -> None:
    code, out, _ = audit("list", "--db", str(db), "--json")

    assert code == 0
    data = json.loads(out)
    assert set(data) == {"journal_id", "binding", "packages", "control"}
    by_id = {p["package_id"]: p for p in data["packages"]}
    assert list(by_id) == ["pkg1", "pkg2", "pkg3"]
    assert (by_id["pkg1"]["state"], by_id["pkg1"]["spot"], by_id["pkg1"]["perp"]) == ("hedged", "0.5", "-0.5")
    assert by_id["pkg2"]["unknown"] is True
    assert by_id["pkg3"]["last_transition"] == "pending->flat (abort)"
    assert {"created_wall", "created_mono", "updated_seq", "quantity", "spot_symbol"} <= set(by_id["pkg1"])


def test_list_filters_by_state(db: Path) -> None:
    code, out, _ = audit("list", "--db", str(db), "--state", "unwinding", "--json")

    assert code == 0
    assert [p["package_id"] for p in json.loads(out)["packages"]] == ["pkg2"]


def test_list_refuses_an_unknown_state_listing_the_valid_ones(db: Path) -> None:
    code, _, err = audit("list", "--db", str(db), "--state", "hedgd")

    assert code == 2
    assert "hedgd" in err
    for state in State:
        assert state.value in err


# --- show ---------------------------------------------------------------------------------------------


def test_show_prints_the_timeline(db: Path) -> None:
    code, out, _ = audit("show", "pkg2", "--db", str(db))

    assert code == 0
    assert "state unwinding" in out
    assert "dispatched -> orphaned (leg_broken)" in out
    assert "orphaned -> unwinding (unwind): kill switch" in out
    assert "post_only_cross" in out
    assert "order_error" in out


def test_show_prints_markup_like_text_literally(db: Path) -> None:
    code, out, _ = audit("show", "pkg3", "--db", str(db))

    assert code == 0
    assert "risk [bold]limit[/bold] hit" in out


def test_show_marks_an_open_package_to_market_at_the_journals_last_fill_prices(db: Path) -> None:
    code, out, _ = audit("show", "pkg1", "--db", str(db))
    assert code == 0
    # Spot 0.5 bought at 3000, perp 0.5 sold at 3003; the last fills on each symbol (pkg2's spot at 3000).
    assert "mark-to-market (open): 0.0000" in out
    assert "at the journal's last known prices, not live marks: ETH/USDT 3000 (last fill" in out
    code, out, _ = audit("show", "pkg1", "--db", str(db), "--json")
    pnl = json.loads(out)["pnl"]
    assert D(pnl["unrealized"]) == 0 and pnl["marks"]["ETH/USDT:USDT"]["price"] == "3003"


def test_pnl_refuses_a_bad_mark_naming_the_option(db: Path) -> None:
    code, _, err = audit("pnl", "--db", str(db), "--mark", "ETH/USDT")
    assert code == 2 and "--mark" in err and "SYMBOL=PRICE" in err
    code, out, _ = audit("pnl", "--db", str(db), "--json", "--mark", "ETH/USDT=3010", "--mark", "ETH/USDT:USDT=3013")
    assert code == 0
    data = json.loads(out)
    assert data["marks"]["ETH/USDT"] == {"price": "3010", "source": "given", "wall_time": None}
    # pkg1 hedged: +10 on 0.5 spot, -10 on the 0.5 short; pkg2 unwinding, still long 0.5 spot bought at 3000.
    assert D(data["groups"][-1]["unrealized"]) == (D("0.5") * 10 - D("0.5") * 10) + D("0.5") * 10


def test_show_json_shape(db: Path) -> None:
    code, out, _ = audit("show", "pkg1", "--db", str(db), "--json")

    assert code == 0
    data = json.loads(out)
    assert data["package"]["state"] == "hedged"
    timeline = data["timeline"]
    assert [r["kind"] for r in timeline] == ["package_created", "event", "intent", "intent", "transition",
                                              "event", "event", "transition"]  # fmt: skip
    assert [r["seq"] for r in timeline] == sorted(r["seq"] for r in timeline)
    first = timeline[0]
    assert set(first) == {"seq", "kind", "package_id", "payload", "wall_time", "mono_time", "prev_hash", "hash"}
    assert first["payload"]["plan"]["package_id"] == "pkg1"


def test_show_unknown_package(db: Path) -> None:
    code, _, err = audit("show", "pkg9", "--db", str(db))

    assert code == 1
    assert "no package 'pkg9'" in err
    assert "pkg3" in err  # it names what does exist


def test_show_unknown_package_with_markup_in_its_name(db: Path) -> None:
    code, out, err = audit("show", "[/bold]", "--db", str(db))

    assert code == 1
    assert "no package '[/bold]'" in err
    assert "Traceback" not in out + err


# --- verify -------------------------------------------------------------------------------------------


def test_verify_ok(db: Path) -> None:
    code, out, _ = audit("verify", "--db", str(db))

    assert code == 0
    assert out.startswith("OK ")
    assert "3 packages" in out


def test_verify_json_ok(db: Path) -> None:
    code, out, _ = audit("verify", "--db", str(db), "--json")

    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True
    assert data["problems"] == []
    assert data["packages_checked"] == 3
    assert data["rows_checked"] == data["head"]["seq"] > 0
    assert len(data["head"]["hash"]) == 64


def _tamper(db: Path) -> int:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER journal_no_update")
    (seq,) = conn.execute("SELECT seq FROM journal WHERE kind = 'transition' AND package_id = 'pkg1' "
                          "ORDER BY seq DESC LIMIT 1").fetchone()  # fmt: skip
    conn.execute("UPDATE journal SET payload = replace(payload, 'hedged', 'flat') WHERE seq = ?", (seq,))
    conn.close()
    return int(seq)


def test_verify_fails_naming_the_first_bad_row(db: Path) -> None:
    seq = _tamper(db)

    code, out, _ = audit("verify", "--db", str(db))

    assert code == 1
    assert "FAILED" in out
    problems = [line.strip() for line in out.splitlines() if line.strip().startswith("- ")]
    assert problems[0].startswith(f"- seq {seq}: hash does not match")


def test_verify_json_failure(db: Path) -> None:
    seq = _tamper(db)

    code, out, _ = audit("verify", "--db", str(db), "--json")

    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False
    assert data["problems"][0].startswith(f"seq {seq}:")
    assert any("package pkg1" in p for p in data["problems"])


# --- no journal -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["list"], ["show", "pkg1"], ["verify"], ["verify", "--json"]])
def test_missing_db_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nope.db"

    code, out, err = audit(*command, "--db", str(missing))

    assert code == 2
    assert f"no journal at '{missing}'" in err
    assert "Traceback" not in out + err
    assert not missing.exists()


def test_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")

    code, out, err = audit("verify", "--db", str(other))

    assert code == 2
    assert "not a legguard journal" in err
    assert "Traceback" not in out + err


def test_default_db_is_legguard_db_in_the_working_directory(
    db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(db.parent)
    assert audit("verify")[0] == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert audit("verify")[0] == 2


def test_show_names_the_execution_style_and_each_legs_role(tmp_path: Path) -> None:
    path = tmp_path / "styles.db"
    with Journal.open(path) as journal:
        plan = PackagePlan.from_dict({**_plan(journal, journal.next_package_number()).to_dict(),
                                      "style": "maker-taker", "maker": "perp"})  # fmt: skip
        journal.package_created(plan, {}, 1.0)
        core = PackageCore(plan)
        commands = core.handle(Dispatch())
        journal.record_step(plan.package_id, Dispatch(), commands, core.state, core.exposure(), 1.5)
    code, out, _ = audit("show", plan.package_id, "--db", str(path))
    assert code == 0
    assert "execution maker-taker" in out
    assert "spot leg ETH/USDT: taker" in out and "perp leg ETH/USDT:USDT: maker" in out
    assert "maker-taker (perp" in out  # the creation row (the table may wrap it)
    code, out, _ = audit("show", plan.package_id, "--db", str(path), "--json")
    package = json.loads(out)["package"]
    assert (package["execution"], package["spot_role"], package["perp_role"]) == ("maker-taker", "taker", "maker")


def test_operator_actions_show_in_list_and_in_show_engine(db: Path) -> None:
    with Journal.open(db) as journal:
        journal.record("engine", None, {"event": "halted", "reason": "news", "source": "operator"}, 10.0)
        journal.record("control", None, {"action": "halt", "reason": "news", "via": "socket", "result": "halted"}, 10.0)
        journal.record(
            "control", "pkg1", {"action": "close", "reason": "eod", "via": "socket", "result": "closing"}, 11.0
        )

    _, listed, _ = audit("list", "--db", str(db))
    _, listed_json, _ = audit("list", "--db", str(db), "--json")
    _, engine, _ = audit("show", "engine", "--db", str(db))
    _, package, _ = audit("show", "pkg1", "--db", str(db))

    assert "1 operator action(s)" in listed and "operator halt via socket: 'news' -> halted" in listed
    assert [c["payload"]["action"] for c in json.loads(listed_json)["control"]] == ["halt"]
    assert "operator halt via socket: 'news' -> halted" in engine and "event=halted" in engine
    assert "operator close via socket: 'eod' -> closing" in package


# --- verify --anchors (issue 10, defect 7) ------------------------------------------------------------


@pytest.fixture
def anchored(db: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The journal above plus a last `note` row, anchored at its head: (db, anchors file, key file)."""
    keyfile, anchors = tmp_path / "secret" / "anchor.key", tmp_path / "legguard.db.anchors"
    with Journal.open(db) as journal:
        journal.record("note", None, {"what": "the last row"}, 99.0)
        Anchorer(journal, load_or_create_key(keyfile), anchors).anchor("shutdown")
    return db, anchors, keyfile


def _cut_the_last_row(db: Path) -> None:
    """Delete the newest row and point meta.head at the one before: the chain check cannot tell."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER journal_no_delete")
    conn.execute("DELETE FROM journal WHERE seq = (SELECT MAX(seq) FROM journal)")
    seq, digest = conn.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
    conn.execute("UPDATE meta SET value = ? WHERE key = 'head'", (f"{seq}:{digest}",))
    conn.close()


def test_verify_with_anchors_ok_names_the_last_anchor_and_the_key(anchored: tuple[Path, Path, Path]) -> None:
    db, anchors, keyfile = anchored
    code, public, _ = audit("public-key", "--key", str(keyfile))
    assert code == 0 and public.startswith("ed25519:")
    assert "PRIVATE" not in public

    code, out, _ = audit("verify", "--db", str(db), "--anchors", str(anchors), "--public-key", public.strip())

    assert code == 0, out
    assert out.startswith("OK ")
    assert "1 signed anchor(s)" in out and "pinned key" in out


def test_verify_with_anchors_fails_in_one_line_when_the_last_rows_were_cut(anchored: tuple[Path, Path, Path]) -> None:
    db, anchors, _ = anchored
    _cut_the_last_row(db)
    assert audit("verify", "--db", str(db))[0] == 0  # the chain alone is fooled

    code, out, err = audit("verify", "--db", str(db), "--anchors", str(anchors))

    assert code == 1
    assert out.splitlines()[0].startswith("FAILED anchors: journal ") and "were deleted" in out.splitlines()[0]
    assert len(out.splitlines()) == 1 and "Traceback" not in out + err


def test_verify_with_anchors_refuses_a_key_that_did_not_sign_them(
    anchored: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    db, anchors, _ = anchored
    other = public_key_text(load_or_create_key(tmp_path / "other.key").public_key())

    code, out, _ = audit("verify", "--db", str(db), "--anchors", str(anchors), "--public-key", other)

    assert code == 1 and "not signed by the pinned key" in out


def test_verify_json_carries_the_anchor_check(anchored: tuple[Path, Path, Path]) -> None:
    db, anchors, _ = anchored
    _cut_the_last_row(db)

    code, out, _ = audit("verify", "--db", str(db), "--anchors", str(anchors), "--json")

    data = json.loads(out)
    assert code == 1 and data["ok"] is False and data["problems"] == []
    assert data["anchors"]["ok"] is False and data["anchors"]["key_pinned"] is False


def test_verify_with_a_missing_anchors_file_says_so(db: Path, tmp_path: Path) -> None:
    code, _, err = audit("verify", "--db", str(db), "--anchors", str(tmp_path / "nope.anchors"))
    assert code == 2 and "no anchors file" in err


def test_show_names_the_policy_that_closed_a_package_and_verify_replays_the_exit(tmp_path: Path) -> None:
    from legguard.fsm import CloseRequested, SendOrder

    path = tmp_path / "exit.db"
    with Journal.open(path) as journal:
        mono = 10.0

        def step(core: PackageCore, event: Event) -> list[object]:
            nonlocal mono
            mono += 0.5
            commands = core.handle(event)
            journal.record_step(core.plan.package_id, event, commands, core.state, core.exposure(), mono)
            return list(commands)

        plan = _plan(journal, journal.next_package_number())
        journal.package_created(plan, {"base": "ETH"}, mono)
        core, p = PackageCore(plan), plan.client_id_prefix
        step(core, Dispatch())
        step(core, OrderEvent(f"{p}-SE0", OrderStatus.CLOSED, D("0.5"), D("3000")))
        step(core, OrderEvent(f"{p}-PE0", OrderStatus.CLOSED, D("0.5"), D("3003")))
        journal.record("exit", plan.package_id, {"policy": "max_hold", "reason": "hedged 600.0s (max_hold 600s)",
                                                 "passive": True, "spot_price": "3001", "perp_price": "3002"},
                       mono)  # fmt: skip
        sends = [c.intent for c in step(core, CloseRequested("hedged 600.0s", "max_hold", D("3001"), D("3002")))
                 if isinstance(c, SendOrder)]  # fmt: skip
        for i in sends:
            step(core, OrderEvent(i.client_order_id, OrderStatus.CLOSED, i.amount, i.price))
        assert core.state is State.FLAT

    code, out, _ = audit("show", "pkg1", "--db", str(path))
    assert code == 0
    assert "closed by max_hold" in out
    assert "closed by max_hold: hedged 600.0s" in " ".join(out.split())
    code, out, _ = audit("verify", "--db", str(path))
    assert code == 0, out
