"""A broken config is refused with one message naming the key (or the TOML line), before anything runs."""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from legguard.engine.app._config import (
    EMULATOR_DEFAULT_KEY,
    ConfigError,
    Credentials,
    VenueConfig,
    load_config,
    parse_config,
)
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


@pytest.mark.parametrize("name", ["sim.toml", "emulator.toml", "funding.toml"])
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
        (GOOD + "\n[deadlines]\nrecv_window = 0\n", "deadlines.recv_window: 0 is invalid"),
        (GOOD + "\n[deadlines]\nclock_allowance = -1\n", "deadlines.clock_allowance: -1 is invalid"),
        (GOOD + "\n[breaker]\nmax_orphans = 0\n", "breaker.max_orphans"),
        (GOOD + '\n[engine]\npolicy = "yolo"\n', "engine.policy: 'yolo' is invalid; allowed: flatten, trim"),
        (GOOD + '\n[journal]\ndurability = "maybe"\n', "journal.durability"),
        ("[venue\nkind = 1", r"invalid TOML: .*line 1"),
        (
            '[venue]\nkind = "binance"\ntestnet = true\n[[pairs]]\nspot="a"\nperp="b"\nquantity="1"\n',
            "venue.api_key_env: missing",
        ),
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
    with pytest.raises(
        ConfigError, match=re.escape("'K' (venue.api_key_env) and 'S' (venue.api_secret_env) are not set")
    ):
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


def test_operations_sections(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + """
[breaker]
resume_after = 300
[metrics]
port = 9464
[alerts]
webhook_url = "https://hooks.slack.com/services/T0/B0/s3cr3t"
format = "slack"
dedupe = 120
"""))  # fmt: skip
    assert cfg.engine.breaker.resume_after == 300.0
    assert (cfg.metrics.port, cfg.metrics.host) == (9464, "127.0.0.1")
    assert cfg.alerts.format == "slack" and cfg.alerts.dedupe == 120.0
    defaults = load_config(write(tmp_path, GOOD))
    assert defaults.metrics.port is None and defaults.alerts.webhook_url is None
    assert defaults.engine.breaker.resume_after is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[metrics]\nport = 70000", "metrics.port: 70000 is invalid; must be 1..65535"),
        ("[alerts]\nformat = 'pager'", "alerts.format: 'pager' is invalid; allowed: json, slack, discord, telegram"),
        ("[alerts]\nwebhook_url = 'ftp://x/tok3n'", "alerts.webhook_url: invalid; expected an http:// or https://"),
        ("[alerts]\nwebhook_url = 'https://api.telegram.org/bot1:tok3n/sendMessage'\nformat = 'telegram'",
         "alerts.chat_id: missing"),
        ("[breaker]\nresume_after = -1", "breaker.resume_after: -1 is invalid"),
        ("[alerts]\nsms = 1", "alerts.sms: unknown key"),
    ],
)  # fmt: skip
def test_operations_errors_name_the_key(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config(write(tmp_path, GOOD + section))
    assert "tok3n" not in str(info.value)  # a webhook URL is a credential: never echoed


@pytest.mark.parametrize("kind", ["emulator", "binance"])
def test_one_credential_variable_alone_is_refused_naming_the_missing_one(kind: str) -> None:
    venue = VenueConfig(kind=kind, api_key_env="K", api_secret_env="S", testnet=kind == "binance" or None)

    with pytest.raises(ConfigError, match=re.escape("'S' (venue.api_secret_env) is not set but the other one is")):
        venue.credentials({"K": "key"})
    with pytest.raises(ConfigError, match=re.escape("'K' (venue.api_key_env) is not set but the other one is")):
        venue.credentials({"S": "secret"})


def test_emulator_uses_the_given_credentials_when_both_are_set() -> None:
    creds = VenueConfig(kind="emulator", api_key_env="K", api_secret_env="S").credentials({"K": "k1", "S": "s1"})
    assert creds is not None and (creds.api_key, creds.api_secret) == ("k1", "s1")


BINANCE = """
[venue]
kind = "binance"
api_key_env = "K"
api_secret_env = "S"
{extra}

[[pairs]]
spot = "ETH/USDT"
perp = "ETH/USDT:USDT"
quantity = "0.05"
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("", "venue.testnet: missing; kind 'binance' needs it: true (Binance testnet) or false (mainnet"),
        ('testnet = "yes"', "venue.testnet: 'yes' is invalid; expected true or false"),
        (
            'testnet = true\nurl = "https://testnet.binancefuture.com"',
            "venue.url: 'https://testnet.binancefuture.com' is not supported for kind 'binance'",
        ),
        ('testnet = true\nmargin_type = "hedge"', "venue.margin_type: 'hedge' is invalid; allowed: cross, isolated"),
        ("testnet = true\nleverage = 0", "venue.leverage: 0 is invalid"),
    ],
)
def test_binance_venue_must_say_testnet_or_mainnet_and_has_no_url(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(tomllib.loads(BINANCE.format(extra=extra)))


@pytest.mark.parametrize(("testnet", "endpoint"), [(True, "binance testnet"), (False, "binance mainnet")])
def test_binance_testnet_flag_names_the_endpoint(testnet: bool, endpoint: str) -> None:
    extra = f'testnet = {str(testnet).lower()}\nleverage = 3\nmargin_type = "isolated"'
    venue = parse_config(tomllib.loads(BINANCE.format(extra=extra))).venue

    assert (venue.testnet, venue.endpoint, venue.leverage, venue.margin_type) == (testnet, endpoint, 3, "isolated")


def test_testnet_is_refused_for_other_kinds() -> None:
    text = BINANCE.format(extra="testnet = true").replace('kind = "binance"', 'kind = "emulator"')
    with pytest.raises(ConfigError, match=re.escape("venue.testnet: only applies to kind 'binance'")):
        parse_config(tomllib.loads(text))


def test_anchor_settings_resolve_relative_to_the_config_file(tmp_path: Path) -> None:
    text = GOOD + '[journal]\nanchor_key = "keys/a.key"\nanchors = "/var/tmp/x.anchors"\nanchor_interval = 30\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.anchor_key == tmp_path / "keys" / "a.key"
    assert cfg.anchors == Path("/var/tmp/x.anchors")
    assert cfg.anchor_interval == 30.0
    assert load_config(write(tmp_path, GOOD)).anchor_key is None  # off unless configured


def test_a_bad_anchor_interval_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"journal\.anchor_interval"):
        load_config(write(tmp_path, GOOD + "[journal]\nanchor_interval = 0\n"))


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


# --- [strategy] ---------------------------------------------------------------------------------------


def test_the_funding_example_runs_the_funding_signal() -> None:
    cfg = load_config(EXAMPLES / "funding.toml")

    assert cfg.strategy.kind == "funding" and cfg.strategy.funding.horizon == 60
    assert cfg.strategy.funding_poll == 5 and cfg.strategy.funding.max_funding_age == 60


def test_the_strategy_is_the_premium_trigger_unless_the_config_names_another(tmp_path: Path) -> None:
    from legguard.engine.app._carry import FundingStrategy
    from legguard.engine.app._strategy import PremiumTrigger

    premium = load_config(write(tmp_path, GOOD + '[strategy]\npremium_threshold = "0.002"\n'))
    funding = load_config(write(tmp_path, GOOD + '[strategy]\nkind = "funding"\nhorizon = 3600\nmin_hold = 0\n'))

    trigger = premium.strategy.make(premium.pairs)
    assert isinstance(trigger, PremiumTrigger) and trigger.threshold == Decimal("0.002")
    assert isinstance(load_config(write(tmp_path, GOOD)).strategy.make(premium.pairs), PremiumTrigger)
    signal = funding.strategy.make(funding.pairs)
    assert isinstance(signal, FundingStrategy) and signal.params.horizon == 3600 and signal.params.min_hold == 0
    # Safe defaults: an edge of 5 bp of the notional to enter, a close only once a package would lose.
    assert signal.params.min_edge == Decimal("0.0005") and signal.params.close_below == 0


@pytest.mark.parametrize(
    ("strategy", "words"),
    [
        (
            'kind = "fundng"',
            "strategy.kind: 'fundng' is invalid; allowed: premium, funding, or python:<module>:<Class>",
        ),
        ('kind = "funding"\npremium_threshold = "0.001"', "strategy.premium_threshold: only applies to kind 'premium'"),
        ("horizon = 3600", "strategy.horizon: only applies to kind 'funding' (kind is 'premium')"),
        ('kind = "funding"\nhorizn = 3600', "strategy.horizn: unknown key; allowed for kind 'funding'"),
        ('kind = "funding"\nhorizon = 0', "strategy.horizon: 0 is invalid"),
        ('kind = "funding"\nhorizon = "8h"', "strategy.horizon: '8h' is invalid; expected a number of seconds"),
        ('kind = "funding"\nmin_edge = "abc"', "strategy.min_edge"),
        ('kind = "funding"\nclose_below = "0.001"', "strategy.close_below: '0.001' is invalid; must be below"),
        ('kind = "funding"\nmin_hold = -1', "strategy.min_hold: -1 is invalid"),
        ('kind = "funding"\norphan_prior = "1.5"', "strategy.orphan_prior: '1.5' is invalid; a fraction in [0, 1]"),
        ('kind = "funding"\norphan_prior_weight = 0', "strategy.orphan_prior_weight: 0 is invalid; must be >= 1"),
        ('kind = "funding"\nfunding_poll = 30\nmax_funding_age = 20', "strategy.max_funding_age: 20 is invalid"),
        ("kind = 3", "strategy.kind: 3 is invalid"),
    ],
)
def test_strategy_errors_name_the_key_and_the_value(tmp_path: Path, strategy: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD + f"[strategy]\n{strategy}\n"))

    assert words in str(info.value)


def test_the_basis_exit_check_against_the_premium_threshold_applies_to_the_premium_trigger_only(
    tmp_path: Path,
) -> None:
    exit_table = '[exit]\nbasis_below = "0.003"\n'
    with pytest.raises(ConfigError, match=r"exit\.basis_below"):
        load_config(write(tmp_path, GOOD + '[strategy]\npremium_threshold = "0.002"\n' + exit_table))

    assert load_config(write(tmp_path, GOOD + '[strategy]\nkind = "funding"\n' + exit_table)).strategy.kind == "funding"


def test_spot_fee_in_base_defaults_on_and_can_be_turned_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).engine.spot_fee_in_base is True  # Binance's default
    off = load_config(write(tmp_path, GOOD + "\n[engine]\nspot_fee_in_base = false\n"))
    assert off.engine.spot_fee_in_base is False  # fees paid in BNB: no gross-up
    with pytest.raises(ConfigError, match=r"engine\.spot_fee_in_base"):
        load_config(write(tmp_path, GOOD + '\n[engine]\nspot_fee_in_base = "bnb"\n'))


def test_keep_warm_is_off_unless_asked_for(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).engine.keep_warm is None
    assert load_config(write(tmp_path, GOOD + "\n[engine]\nkeep_warm = 0.001\n")).engine.keep_warm == 0.001
    assert load_config(write(tmp_path, GOOD + "\n[engine]\nkeep_warm = 0.0005\n")).engine.keep_warm == 0.0005
    for off in ("false", "0", "0.0"):
        assert load_config(write(tmp_path, GOOD + f"\n[engine]\nkeep_warm = {off}\n")).engine.keep_warm is None
    for bad, why in (('"1ms"', "expected seconds"), ("-0.001", "expected seconds"), ("true", "expected seconds"),
                     ("5", "above 1 s")):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"engine\.keep_warm: .* is invalid; {why}"):
            load_config(write(tmp_path, GOOD + f"\n[engine]\nkeep_warm = {bad}\n"))
