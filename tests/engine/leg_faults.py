"""The sim venue's fault kinds that strike one leg, with the parameters the engine-level suites inject them with
(entries in `test_engine.py`, every execution style in `test_execution_styles.py`, exits in `test_exits.py`)."""

LEG_FAULTS: list[tuple[str, dict[str, float]]] = [
    ("reject", {}),
    ("postonly_cross", {}),
    ("partial_fill", {"fraction": 0.4}),
    ("ack_timeout", {}),
    ("stream_drop", {"seconds": 2.0}),
    ("price_jump", {"pct": 0.6}),
]
