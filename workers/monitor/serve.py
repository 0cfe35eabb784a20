"""Run the monitor: check where it may listen, open the queue, serve until Ctrl-C."""

from __future__ import annotations

import socket

import click
import uvicorn

from pipeline.errors import JobError

from ..status import open_existing
from .access import Access, check_listen, check_token, parse_bind
from .app import build_app


def serve(queue_url: str, bind_text: str, token: str | None) -> None:
    bind = parse_bind(bind_text)
    check_token(token)
    check_listen(bind, token)
    queue = open_existing(queue_url)
    # Bind here, not inside uvicorn, so a port in use is one line naming --bind (exit 2).
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind.host, bind.port))
    except OSError as err:
        sock.close()
        queue.close()
        raise JobError("--bind", bind_text, f"cannot listen there: {err.strerror or err}") from None
    port = sock.getsockname()[1]
    app = build_app(queue, Access(token=token or None, reads_need_token=not bind.loopback), bind)
    reads = "reads open on loopback" if bind.loopback else "reads and actions need the token"
    actions = "actions need the token" if token else "actions off (no --token)"
    click.echo(f"monitor on {bind.url.rsplit(':', 1)[0]}:{port} for the queue {queue.where} ({reads}; "
               f"{actions})", err=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        queue.close()
