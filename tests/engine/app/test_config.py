"""A broken config is refused with one message naming the key (or the TOML line), before anything runs."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from legguard.engine.app._config import EMULATOR_DEFAULT_KEY, ConfigError, Credentials, VenueConfig, load_config
from legguard.fsm import ExecutionStyle, LegRole, OrphanPolicy

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
        (GOOD + 'execution = "yolo"\n', r"pairs\[0\]\.execution: 'yolo' is invalid; allowed: maker-maker, maker-taker"),
        (GOOD + 'execution = "maker-taker"\nmaker_leg = "both"\n', r"pairs\[0\]\.maker_leg: 'both' is invalid"),
        (GOOD + 'maker_leg = "perp"\n', r"pairs\[0\]\.maker_leg: only applies to execution = \"maker-taker\""),
        (GOOD + 'execution = "taker-taker"\nmax_slippage = "0.5"\n', r"pairs\[0\]\.max_slippage: '0.5' is invalid"),
        (GOOD + "execution = 1\n", r"pairs\[0\]\.execution: 1 is invalid; expected a non-empty string"),
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


def test_execution_style_per_pair(tmp_path: Path) -> None:
    text = GOOD + 'execution = "maker-taker"\nmaker_leg = "perp"\nmax_slippage = 0.001\n'
    text += '[[pairs]]\nspot = "BTC/USDT"\nperp = "BTC/USDT:USDT"\nquantity = "0.01"\n'
    cfg = load_config(write(tmp_path, text))
    eth, btc = cfg.pairs
    assert (eth.execution, eth.maker_leg, eth.max_slippage) == (ExecutionStyle.MAKER_TAKER, LegRole.PERP,
                                                                Decimal("0.001"))  # fmt: skip
    assert (btc.execution, btc.max_slippage) == (ExecutionStyle.MAKER_MAKER, Decimal("0.0005"))  # the default
    assert load_config(EXAMPLES / "emulator.toml").pairs[0].execution is ExecutionStyle.MAKER_TAKER
