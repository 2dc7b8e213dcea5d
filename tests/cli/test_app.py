"""The app's help: every command's text flows to the terminal's width (a docstring's source line breaks are not
the reader's), and nothing in it is eaten as rich markup."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from legguard.cli import app
from legguard.cli._app import _flowed
from legguard.cli._audit import audit_app


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return re.sub(r"[│ ]+", " ", result.output)  # the panels' borders and padding


def test_a_docstrings_lines_are_joined_and_its_paragraphs_kept() -> None:
    doc = """First line of a sentence
        that goes on.

        A second paragraph,
        on two lines."""
    assert _flowed(doc) == "First line of a sentence that goes on.\n\nA second paragraph, on two lines."
    assert _flowed(None) is None
    for info in (*app.registered_commands, *audit_app.registered_commands):
        assert info.help and all("\n" not in p for p in info.help.split("\n\n")), info.name


def test_the_command_list_and_a_commands_help_flow_across_the_source_line_breaks() -> None:
    # `recover`'s docstring breaks its first sentence after "resume each" and after "and exit.".
    sentence = "every package not flat, resume each package's state machine from the facts"
    assert sentence in _help()
    assert sentence in _help("recover") and "cancel our stray orders, and exit. `legguard run` does" in _help("recover")


def test_a_config_section_named_in_a_help_text_is_printed() -> None:
    # rich reads a bare "[metrics]" as a style tag: it printed "overrides the config's  port".
    assert "overrides the config's [metrics] port" in _help("run")
