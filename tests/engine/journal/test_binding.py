"""A journal belongs to one venue and one account: bound on first use (a hash-chained row, no secret),
refused elsewhere naming both, re-bound only on request."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from legguard.cli import app
from legguard.domain import Side
from legguard.engine import Journal, verify
from legguard.engine.app._config import VenueConfig
from legguard.engine.app._runner import identity_of
from legguard.engine.journal._binding import (
    SIM_IDENTITY,
    BindingMismatch,
    bound_identity,
    check_binding,
    record_binding,
)
from legguard.fsm import LegPlan, PackagePlan

EMU = VenueConfig(kind="emulator", url="http://127.0.0.1:8765", api_key_env="K", api_secret_env="S")
KEYS = {"K": "the-api-key-123456", "S": "the-secret-123456"}


def test_the_fingerprint_names_the_account_without_its_key(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        identity = identity_of(EMU, journal.journal_id, KEYS)
        other = identity_of(EMU, journal.journal_id, {**KEYS, "K": "another-key"})

    assert identity.endpoint == "emulator http://127.0.0.1:8765" and identity.kind == "emulator"
    assert identity.account.startswith("key-sha256:") and identity.account != other.account
    assert "the-api-key" not in identity.describe() and "the-secret" not in identity.describe()


def test_first_use_binds_and_the_same_venue_is_welcome_again(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        identity = identity_of(EMU, journal.journal_id, KEYS)
        assert check_binding(journal, identity) is None
        assert record_binding(journal, identity, None, 1.0)
        assert check_binding(journal, identity) == identity
        assert not record_binding(journal, identity, identity, 2.0)  # once is enough
        assert bound_identity(journal) == identity
        rows = [r for r in journal.engine_log() if r.kind == "binding"]
    assert len(rows) == 1 and "the-api-key" not in str(rows[0].payload)
    assert verify(tmp_path / "j.db").ok


@pytest.mark.parametrize("change", ["venue", "account"])
def test_another_venue_or_account_is_refused_naming_both(tmp_path: Path, change: str) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        mine = identity_of(EMU, journal.journal_id, KEYS)
        record_binding(journal, mine, None, 1.0)
        if change == "venue":
            theirs = SIM_IDENTITY
        else:
            theirs = identity_of(EMU, journal.journal_id, {**KEYS, "K": "someone-else"})

        with pytest.raises(BindingMismatch) as caught:
            check_binding(journal, theirs)

    message = str(caught.value)
    assert mine.describe() in message and theirs.describe() in message and "--rebind-journal" in message


def test_rebind_is_journaled_with_the_binding_it_replaced(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.db") as journal:
        record_binding(journal, SIM_IDENTITY, None, 1.0)
        mine = identity_of(EMU, journal.journal_id, KEYS)
        previous = check_binding(journal, mine, rebind=True)
        record_binding(journal, mine, previous, 2.0)

        assert bound_identity(journal) == mine
        last = [r for r in journal.engine_log() if r.kind == "binding"][-1]
    assert last.payload["replaces"] == SIM_IDENTITY.to_dict()


def test_an_unbound_journal_holding_packages_is_refused(tmp_path: Path) -> None:
    """A journal from before binding existed: packages of unknown origin are nobody's to trade."""
    with Journal.open(tmp_path / "old.db") as journal:
        number = journal.next_package_number()
        plan = PackagePlan(
            package_id=f"P{number:06d}",
            client_id_prefix=f"lg{journal.journal_id}{number:06d}",
            quantity=Decimal("0.05"),
            spot=LegPlan("ETH/USDT", Side.BUY, Decimal(1900), Decimal("0.0001"), Decimal("0.0001")),
            perp=LegPlan("ETH/USDT:USDT", Side.SELL, Decimal(2100), Decimal("0.001"), Decimal("0.001")),
        )
        journal.package_created(plan, {}, 0.0)

        with pytest.raises(BindingMismatch, match="holds 1 package\\(s\\) but records no venue"):
            check_binding(journal, SIM_IDENTITY)
        assert check_binding(journal, SIM_IDENTITY, rebind=True) is None  # the operator's explicit choice


def test_recover_refuses_a_demo_journal_for_the_emulator_and_trades_nothing(tmp_path: Path) -> None:
    """The issue's first case: `recover --config emulator.toml --db <a demo journal>` sold spot it never
    bought. Now it is refused before anything connects (the emulator here is not even running)."""
    db, config = tmp_path / "demo.db", tmp_path / "emu.toml"
    demo = CliRunner().invoke(app, ["demo", "--db", str(db), "--seconds", "2", "--json", "--faults", "heavy"])
    assert demo.exit_code in (0, 1), demo.output
    config.write_text('[venue]\nkind = "emulator"\nurl = "http://127.0.0.1:9"\n\n[[pairs]]\nspot = "ETH/USDT"\n'
                      'perp = "ETH/USDT:USDT"\nquantity = "0.05"\n')  # fmt: skip
    with Journal.open(db, readonly=True) as journal:
        head = journal.head

    result = CliRunner().invoke(app, ["recover", "--config", str(config), "--db", str(db)])

    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "belongs to sim (account sim), not to emulator http://127.0.0.1:9" in errors[0]
    with Journal.open(db, readonly=True) as journal:
        assert journal.head == head  # not one row written


def test_run_with_rebind_journal_takes_the_journal_over(tmp_path: Path) -> None:
    db, config = tmp_path / "j.db", tmp_path / "sim.toml"
    config.write_text('[venue]\nkind = "sim"\n\n[[pairs]]\nspot = "ETH/USDT"\nperp = "ETH/USDT:USDT"\n'
                      'quantity = "0.05"\n')  # fmt: skip
    with Journal.open(db) as journal:
        record_binding(journal, identity_of(EMU, journal.journal_id, KEYS), None, 1.0)

    refused = CliRunner().invoke(app, ["run", "--config", str(config), "--db", str(db), "--seconds", "0.2"])
    taken = CliRunner().invoke(app, ["run", "--config", str(config), "--db", str(db), "--seconds", "0.2",
                                     "--rebind-journal"])  # fmt: skip

    assert refused.exit_code == 2 and "belongs to emulator" in refused.stderr
    assert taken.exit_code == 0, taken.output
    with Journal.open(db, readonly=True) as journal:
        assert bound_identity(journal) == SIM_IDENTITY


def test_audit_list_shows_whose_journal_it_is(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    with Journal.open(db) as journal:
        record_binding(journal, SIM_IDENTITY, None, 1.0)

    as_json = CliRunner().invoke(app, ["audit", "list", "--db", str(db), "--json"])
    as_text = CliRunner().invoke(app, ["audit", "list", "--db", str(db)])

    assert json.loads(as_json.stdout)["binding"] == {"kind": "sim", "endpoint": "sim", "account": "sim"}
    assert "(venue sim (account sim))" in " ".join(as_text.stdout.split())
