"""Who may read and who may act, and where the monitor may listen.

Actions (requeue, cancel, priority, pause, resume, drain) need the token, sent as
`Authorization: Bearer TOKEN`; a monitor started without one refuses every action.
Reading needs no token on a loopback address; on any other address the monitor refuses
to start without a token, and reads need it too. The token is compared in constant
time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from starlette.requests import Request

from pipeline.errors import JobError

from ..tasks import whole_number

DEFAULT_BIND = "127.0.0.1:8470"
BIND_FORMS = "HOST:PORT, e.g. 127.0.0.1:8470, 0.0.0.0:8470 or [::1]:8470"


@dataclass(frozen=True)
class Bind:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:   # a host name: it may resolve to anything
            return False

    @property
    def url(self) -> str:
        return f"http://{'[' + self.host + ']' if ':' in self.host else self.host}:{self.port}"


def parse_bind(text: str) -> Bind:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = whole_number(port, 65535)
    if not sep or not host or number is None:
        raise JobError("--bind", text, f"expected {BIND_FORMS} (port 0-65535, ASCII digits)")
    return Bind(host, number)


def check_token(token: str | None) -> None:
    """Refuse at start a token no request could send: it travels in an HTTP header, which
    drops leading and trailing whitespace and reaches the app as Latin-1, so a token with
    whitespace or non-ASCII characters would never match. The token itself is not shown."""
    if token and not (token.isascii() and token.isprintable() and not any(c.isspace() for c in token)):
        raise JobError("--token (or $FRAMEFARM_MONITOR_TOKEN)", "(not shown)", "expected printable ASCII without "
                       "spaces: it is sent as 'Authorization: Bearer TOKEN', which cannot carry other characters")


def check_listen(bind: Bind, token: str | None) -> None:
    """Refuse to serve the farm's controls beyond this host without a token."""
    if not bind.loopback and not token:
        raise JobError("--bind", f"{bind.host}:{bind.port}", "is not a loopback address; a monitor reachable "
                       "from other hosts needs --token or $FRAMEFARM_MONITOR_TOKEN")


class Denied(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Access:
    token: str | None
    reads_need_token: bool

    def check(self, request: Request, *, action: bool) -> None:
        """Raise Denied (401: no token sent, 403: a wrong one, or actions are off)."""
        if not action and not self.reads_need_token:
            return
        if action and not self.token:
            raise Denied(403, "actions are off: this monitor was started without --token "
                              "(or $FRAMEFARM_MONITOR_TOKEN)")
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not sent:
            raise Denied(401, "this needs the monitor's token: send 'Authorization: Bearer TOKEN'")
        if not hmac.compare_digest(sent.encode(), (self.token or "").encode()):
            raise Denied(403, "the token sent is not this monitor's token")
