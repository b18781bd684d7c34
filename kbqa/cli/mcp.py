"""`kbqa mcp`: the knowledge bases as an MCP server over stdio (see kbqa.mcp_server).

stdout carries the protocol, so everything else (errors included) goes to stderr.
"""

from __future__ import annotations

import typer

from kbqa.cli.common import ConfigOption, HomeOption, KbsOption, command


def register(app: typer.Typer) -> None:
    """Add `mcp` to the kbqa app."""
    app.command()(mcp)


def mcp(kb: KbsOption = None, home: HomeOption = None, config: ConfigOption = None) -> None:
    """Serve search, ask and the document listings to an MCP client over stdio.

    With --kb the client sees only the knowledge bases named, and the first is the default;
    without, it sees them all and `default` is the default.
    """
    from kbqa.mcp_server import run_stdio
    from kbqa.storage.names import validate_kb_name

    with command(home, config) as run:
        settings = run.settings
        kbs = [validate_kb_name(name) for name in kb or []]
    run_stdio(settings, kbs)  # until the client closes stdin
