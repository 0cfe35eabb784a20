"""Completion hooks: a job's `[notify] webhook` gets one JSON POST when the job is done
or has failed, signed with an HMAC-SHA256 of a shared secret (`secret_env` names the
environment variable that holds it on the workers).

The worker that acks a job's last task (or dead-letters one) claims the event in the
queue (`claim_notice`: once per job and event, whichever worker gets there first) and
sends it from a thread of its own, retried with backoff: rendering never waits on it.
A receiver checks `X-Framefarm-Signature: sha256=HEX` against
HMAC-SHA256(secret, body); `X-Framefarm-Event` names the event.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

log = logging.getLogger("framefarm.webhook")
ATTEMPTS = 5
FIRST_DELAY_S = 1.0     # then 2, 4, 8 s: about 15 s in all before giving up
TIMEOUT_S = 10.0        # one attempt, whole: connect, send, and the answer's status line and headers
EXIT_WAIT_S = 20.0      # how long a worker that exits waits for hooks still being sent

_sending: set[threading.Thread] = set()   # the hooks in flight in this process (see `finish_sending`)
_sending_lock = threading.Lock()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, secret: str, event: dict[str, Any]) -> bool:
    """POST `event` until a 2xx answer or ATTEMPTS are spent; True when delivered. Never
    raises: a URL that cannot be used is logged once and not retried."""
    body = json.dumps(event, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", "X-Framefarm-Event": str(event["event"]),
               "X-Framefarm-Signature": signature(secret, body)}
    delay = FIRST_DELAY_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if 200 <= _attempt(url, body, headers) < 300:
                return True
        except (ValueError, http.client.InvalidURL) as err:   # the URL itself: retrying cannot help
            log.error("webhook %s for job %s not sent: its URL cannot be used (%s); fix [notify] webhook in "
                      "the job file", event["event"], event["job"], _hide(f"{type(err).__name__}: {err}", url))
            return False
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:   # the network or the receiver
            log.warning("webhook %s for job %s: attempt %d failed: %s", event["event"], event["job"], attempt,
                        _hide(str(err) or type(err).__name__, url))
        if attempt < ATTEMPTS:
            time.sleep(delay)
            delay *= 2
    log.error("webhook %s for job %s: not delivered after %d attempts", event["event"], event["job"], ATTEMPTS)
    return False


def _attempt(url: str, body: bytes, headers: dict[str, str]) -> int:
    """One POST; the answer's status. A socket timeout bounds each read only (a receiver
    that drips a byte every few seconds would hold the thread for ever), so a watchdog
    shuts the attempt's sockets at TIMEOUT_S: the whole attempt is bounded."""
    opened: list[http.client.HTTPConnection] = []
    cut = threading.Event()

    def watchdog() -> None:
        cut.set()
        for conn in opened:
            if conn.sock is not None:   # the raw socket's shutdown wakes a blocked read, TLS or not
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)

    timer = threading.Timer(TIMEOUT_S, watchdog)
    timer.daemon = True
    timer.start()
    try:
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        with _opener(opened).open(request, timeout=TIMEOUT_S) as answer:
            return int(answer.status)
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        if cut.is_set():
            raise TimeoutError(f"no whole answer within {TIMEOUT_S:g} s") from None
        raise
    finally:
        timer.cancel()


def _opener(opened: list[http.client.HTTPConnection]) -> urllib.request.OpenerDirector:
    """urlopen's opener (proxies, redirects), keeping every connection it makes in `opened`."""
    def keeping(kind: type[http.client.HTTPConnection]) -> Callable[..., http.client.HTTPConnection]:
        def connect(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
            opened.append(kind(*args, **kwargs))
            return opened[-1]
        return connect

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(keeping(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(keeping(http.client.HTTPSConnection), req)

    return urllib.request.build_opener(Http, Https)


def _hide(text: str, url: str) -> str:
    """`text` with the URL's user:password masked (a job queued before submit refused them)."""
    userinfo = url.partition("://")[2].rpartition("@")[0]
    for secret in (userinfo, userinfo.partition(":")[2]):
        if secret:
            text = text.replace(secret, "***")
    return text


def send_in_background(url: str, secret_env: str, event: dict[str, Any]) -> threading.Thread | None:
    """Start the POST in a daemon thread: it never keeps the process alive (a worker
    that exits waits for it a bounded time, `finish_sending`); None, with an error
    logged, when the secret is not set here."""
    secret = os.environ.get(secret_env, "")
    if not secret:
        log.error("webhook %s for job %s not sent: $%s is not set on this worker", event["event"], event["job"],
                  secret_env)
        return None

    def send() -> None:
        try:
            post(url, secret, event)
        finally:
            with _sending_lock:
                _sending.discard(threading.current_thread())

    thread = threading.Thread(target=send, name="webhook", daemon=True)
    with _sending_lock:
        _sending.add(thread)
    thread.start()
    return thread


def finish_sending(wait_s: float = EXIT_WAIT_S) -> int:
    """Wait, at most `wait_s` in all, for the hooks still being sent; how many were left."""
    deadline = time.monotonic() + wait_s
    with _sending_lock:
        pending = list(_sending)
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = sum(thread.is_alive() for thread in pending)
    if left:
        log.error("%d webhook(s) still unsent after %g s: not waiting longer to exit", left, wait_s)
    return left
