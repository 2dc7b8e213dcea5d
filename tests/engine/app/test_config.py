"""A broken config is refused with one message naming the key (or the TOML line), before anything runs."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from legguard.engine.app._config import EMULATOR_DEFAULT_KEY, ConfigError, Credentials, VenueConfig, load_config
from legguard.fsm import OrphanPolicy

EXAMPLES = Path(__file__).parents[3] / "examples"

GOOD = """
[venue]
kind = "sim"
[[pairs]]
spot = "ETH/USDT"
perp = "ETH/USDT:USDT"
quantity = "0.05"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["sim.toml", "emulator.toml"])
def test_examples_load(name: str) -> None:
    cfg = load_config(EXAMPLES / name)
    assert cfg.pairs[0].spot_symbol == "ETH/USDT"
    assert cfg.engine.policy is OrphanPolicy.FLATTEN


def test_minimal_config_gets_safe_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.venue.kind == "sim"
    assert cfg.pairs[0].quantity == Decimal("0.05")
    assert cfg.engine.deadlines.ack > 0
    assert cfg.durability == "process"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (GOOD + "\n[engine]\nmin_spred = 1\n", "engine.min_spred: unknown key"),
        (GOOD + "\nsurprise = 1\n", "surprise: unknown key"),
        (GOOD.replace('quantity = "0.05"', 'quantity = "-1"'), r"pairs\[0\]\.quantity"),
        (GOOD.replace('quantity = "0.05"', "quantity = 0"), r"pairs\[0\]\.quantity"),
        (GOOD.replace('quantity = "0.05"', 'quantity = "lots"'), r"pairs\[0\]\.quantity.*expected a number"),
        (GOOD.replace('quantity = "0.05"\n', ""), r"pairs\[0\]\.quantity: missing"),
        (GOOD.replace('kind = "sim"', 'kind = "ftx"'), "venue.kind: 'ftx' is invalid; allowed: sim, emulator, binance"),
        (GOOD + "\n[deadlines]\nack = -1\n", "deadlines.ack: -1 is invalid"),
        (GOOD + '\n[deadlines]\nfill = "soon"\n', "deadlines.fill: 'soon' is invalid"),
        (GOOD + "\n[breaker]\nmax_orphans = 0\n", "breaker.max_orphans"),
        (GOOD + '\n[engine]\npolicy = "yolo"\n', "engine.policy: 'yolo' is invalid; allowed: flatten, trim"),
        (GOOD + '\n[journal]\ndurability = "maybe"\n', "journal.durability"),
        ("[venue\nkind = 1", r"invalid TOML: .*line 1"),
        ('[venue]\nkind = "binance"\n[[pairs]]\nspot="a"\nperp="b"\nquantity="1"\n', "venue.api_key_env: missing"),
        ("", "venue: missing"),
    ],
)
def test_broken_config_names_the_key(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(write(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.toml")


def test_credentials_come_from_the_environment_and_never_print() -> None:
    venue = VenueConfig(kind="binance", api_key_env="K", api_secret_env="S")
    creds = venue.credentials({"K": "key-abcdef123456", "S": "secret-abcdef123456"})
    assert isinstance(creds, Credentials)
    assert creds.api_key == "key-abcdef123456"
    assert "abcdef" not in repr(creds)
    with pytest.raises(ConfigError, match="must both be set"):
        venue.credentials({})


def test_emulator_falls_back_to_its_documented_credentials() -> None:
    creds = VenueConfig(kind="emulator", api_key_env="K", api_secret_env="S").credentials({})
    assert creds is not None
    assert creds.api_key == EMULATOR_DEFAULT_KEY


def test_exit_and_risk_sections_parse_with_defaults_on(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert not cfg.engine.exit.enabled  # no [exit]: nothing closes by itself
    cfg = load_config(write(tmp_path, GOOD + "[exit]\n"))
    assert cfg.engine.exit.enabled and cfg.engine.exit.basis_below == Decimal("0.0001")
    assert cfg.engine.exit.max_hold is None and cfg.engine.exit.loss_limit is None
    assert cfg.engine.risk.check_balances and cfg.engine.risk.margin_guard
    text = (
        GOOD
        + """
[exit]
basis_below = false
max_hold = 600
loss_limit = "2.5"
deadline = 4.0
[risk]
max_pair_notional = "5000"
max_total_notional = "8000"
max_pair_packages = 10
leverage = 3
margin_warn = "0.6"
margin_act = "0.4"
"""
    )
    cfg = load_config(write(tmp_path, text))
    e, r = cfg.engine.exit, cfg.engine.risk
    assert (e.basis_below, e.max_hold, e.loss_limit, e.deadline) == (None, 600.0, Decimal("2.5"), 4.0)
    assert (r.max_pair_notional, r.max_total_notional, r.max_pair_packages) == (Decimal(5000), Decimal(8000), 10)
    assert (r.leverage, r.margin_warn, r.margin_act) == (3, Decimal("0.6"), Decimal("0.4"))


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ("[exit]\ndeadline = 0", "exit.deadline"),
        ('[exit]\nloss_limit = "-1"', "exit.loss_limit"),
        ('[exit]\nenabled = "yes"', "exit.enabled"),
        ("[exit]\nbasis = 1", "exit.basis"),
        ('[risk]\nmargin_act = "0.7"', "risk.margin_act"),
        ("[risk]\nleverage = 0", "risk.leverage"),
        ("[risk]\nmax_pair_packages = 0", "risk.max_pair_packages"),
        ('[risk]\nmax_total_notional = "0"', "risk.max_total_notional"),
        ('[risk]\nmargin_warn = "1.5"', "risk.margin_warn"),
        ('[exit]\nbasis_below = "0.001"', "exit.basis_below"),
    ],
)
def test_bad_exit_and_risk_keys_name_the_field(tmp_path: Path, section: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(write(tmp_path, GOOD + section + "\n"))
