"""`kaos ui`: the web view of runs, metrics and lineage, on 127.0.0.1 (see kaos.ui.server)."""
from __future__ import annotations

import sys
import webbrowser

import typer

from kaos.cli.common import client, fail


def ui(
    port: int = typer.Option(8765, "--port", "-p", min=0, max=65535,
                             help="Port on 127.0.0.1 (0: any free port)."),
    open_browser: bool = typer.Option(True, "--open/--no-open", help="Open the view in the default browser."),
) -> None:
    """Serve the web view on 127.0.0.1 until Ctrl-C; API requests are signed with your credentials."""
    from kaos.ui.server import UiServer

    client()  # the configuration and credentials are checked now, not on the first page view
    try:
        server = UiServer(port, client)
    except OSError as exc:
        fail(f"--port: cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another port or --port 0")
    # The first line is the URL (with its one-start token), for people and for scripts that start the view.
    sys.stdout.write(f"{server.url}\n")
    sys.stdout.flush()
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
