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

import hashlib
import hmac
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger("framefarm.webhook")
ATTEMPTS = 5
FIRST_DELAY_S = 1.0     # then 2, 4, 8 s: about 15 s in all before giving up
TIMEOUT_S = 10.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, secret: str, event: dict[str, Any]) -> bool:
    """POST `event` until a 2xx answer or ATTEMPTS are spent; True when delivered."""
    body = json.dumps(event, sort_keys=True).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "X-Framefarm-Event": str(event["event"]),
        "X-Framefarm-Signature": signature(secret, body)})
    delay = FIRST_DELAY_S
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                if 200 <= answer.status < 300:
                    return True
        except (urllib.error.URLError, OSError) as err:
            log.warning("webhook %s for job %s: attempt %d failed: %s", event["event"], event["job"], attempt, err)
        if attempt < ATTEMPTS:
            time.sleep(delay)
            delay *= 2
    log.error("webhook %s for job %s: not delivered after %d attempts", event["event"], event["job"], ATTEMPTS)
    return False


def send_in_background(url: str, secret_env: str, event: dict[str, Any]) -> threading.Thread | None:
    """Start the POST in a thread (not a daemon: a worker that exits waits for it, at most
    about a minute); None, with an error logged, when the secret is not set here."""
    secret = os.environ.get(secret_env, "")
    if not secret:
        log.error("webhook %s for job %s not sent: $%s is not set on this worker", event["event"], event["job"],
                  secret_env)
        return None
    thread = threading.Thread(target=post, args=(url, secret, event), name="webhook", daemon=False)
    thread.start()
    return thread
