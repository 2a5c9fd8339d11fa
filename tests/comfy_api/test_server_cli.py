"""`loom serve` and `python -m server` are one command: the same flags, the server-only ones
declared once."""
from __future__ import annotations

import argparse

from engine.cli import build_parser as loom_parser
from server.__main__ import build_parser as server_parser


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def serve_subparser() -> argparse.ArgumentParser:
    parser = loom_parser(["serve"])
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["serve"]


def test_loom_serve_and_python_m_server_take_the_same_flags():
    loom, server = option_strings(serve_subparser()), option_strings(server_parser())
    assert loom == server
    assert {"--allow-host", "--allow-origin", "--max-steps", "--token", "--option",
            "--allow-pickle", "--nodes", "--event-send-timeout"} <= loom


def test_server_only_flags_parse_the_same_in_both():
    argv = ["--allow-host", "studio.lan", "--max-steps", "40", "--nodes", "my_pack", "--log-level", "warning"]
    from_loom = serve_subparser().parse_args(argv)
    from_server = server_parser().parse_args(argv)
    for name in ("allow_host", "max_steps", "nodes", "log_level", "max_upload_mb", "event_queue_size"):
        assert getattr(from_loom, name) == getattr(from_server, name), name
