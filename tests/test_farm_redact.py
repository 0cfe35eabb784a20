"""Redis credentials never reach a message: the URL is taken apart and every credential
masked (user and password in the userinfo, password, username and any other
non-setting query parameter), whatever characters the password holds; checked on
`redact` itself and on the real CLI and worker against a password-protected
redis-server and a port nobody listens on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import free_port, redis_server_port, render

from pipeline.config.urls import redact
from pipeline.errors import JobError

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr@t/pw"          # '@' and '/': the two that used to leak
ENCODED = "s3cr%40t%2Fpw"
FRAGMENTS = ("s3cr", "t/pw", "%40t", "%2Fpw", "hunter2")


def leaks(text: str) -> list[str]:
    return [fragment for fragment in FRAGMENTS if fragment in text]


@pytest.mark.parametrize("url, shown", [
    ("redis://host:6390/0?password=hunter2", "redis://host:6390/0?password=***"),
    ("redis://host:6390/0?db=2&password=hunter2&username=bob", "redis://host:6390/0?db=2&password=***&username=***"),
    ("redis://:hunter2@host:6390/0", "redis://***@host:6390/0"),
    ("redis://default:hunter2@host:6390/0", "redis://***@host:6390/0"),
    (f"redis://:{SECRET}@host:6390/0", "redis://***@host:6390/0"),                # '@' and '/' unencoded
    (f"redis://:{ENCODED}@host:6390/0", "redis://***@host:6390/0"),
    ("redis://:s3cr@t@host:6390/0", "redis://***@host:6390/0"),                   # '@' only
    ("redis://:pa/ss?x#y@host:6390/0", "redis://***@host:6390/0"),                # '/', '?', '#'
    ("rediss://host:6390/0?ssl_password=hunter2&socket_timeout=3", "rediss://host:6390/0?ssl_password=***&socket_timeout=3"),
    ("redis://host:6390/0#hunter2", "redis://host:6390/0#***"),
    ("redis:hunter2@host", "redis:***@host"),
    ("redis://host:6390/0", "redis://host:6390/0"),
])
def test_redact_masks_every_credential(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert leaks(redact(url)) == []


def test_a_url_whose_host_cannot_be_told_from_its_password_is_refused_unread() -> None:
    from workers.redis_queue import RedisQueue

    for url in (f"redis://:{SECRET}@127.0.0.1:6390/0", "redis://:abc@def/ghi@127.0.0.1:6390/0"):
        with pytest.raises(JobError) as caught:
            RedisQueue(url)
        message = str(caught.value)
        assert "percent-encode" in message and leaks(message) == []
        assert "--queue = 'redis://***@127.0.0.1:6390/0'" in message
        assert not any(piece in message for piece in ("abc", "def", "ghi"))


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server that wants the password SECRET."""
    port = redis_server_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--requirepass", SECRET, "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    import redis

    for _ in range(200):
        try:
            redis.Redis(port=port, password=SECRET).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield port
    server.terminate()
    server.wait(10)


def test_password_forms_authenticate_and_nothing_shows_them(locked_redis: int, write_job: Callable[..., Path],
                                                             job_dir: Path) -> None:
    port = locked_redis
    query_form = f"redis://127.0.0.1:{port}/0?password={ENCODED}"
    userinfo_form = f"redis://:s3cr@t%2Fpw@127.0.0.1:{port}/0"           # '@' as is, '/' encoded
    submitted = render("submit", str(write_job(output={"formats": ["png"]})), "--queue", query_form)
    assert submitted.returncode == 0, submitted.stderr
    assert leaks(submitted.stdout + submitted.stderr) == []
    worker = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker", "--queue", query_form, "--device", "cpu",
         "--output-root", str(job_dir), "--model-root", str(job_dir.parent), "--exit-when-idle"],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert worker.returncode == 0, worker.stderr
    assert leaks(worker.stdout + worker.stderr) == [], "the worker logged the password at start"
    assert f"queue redis://127.0.0.1:{port}/0?password=***" in worker.stderr
    assert f"on redis://127.0.0.1:{port}/0?password=***" in submitted.stderr
    shown = render("status", "--queue", userinfo_form)
    assert shown.returncode == 0, shown.stderr
    assert submitted.stdout.strip() in shown.stdout and leaks(shown.stdout + shown.stderr) == []
    for bad in (f"redis://127.0.0.1:{port}/0?password=hunter2", f"redis://:{SECRET}@127.0.0.1:{port}/0"):
        refused = render("status", "--queue", bad)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert leaks(refused.stdout + refused.stderr) == []


def test_retries_against_a_dead_server_never_show_the_password() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?password=hunter2&username=bob"
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "worker", "--queue", url, "--device", "cpu",
         "--output-root", "/nonexistent", "--model-root", "/nonexistent"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        time.sleep(12)  # the imports, then retries after 0.2, 0.4, 0.8, 1.6, 3.2 s
    finally:
        worker.kill()
    _out, err = worker.communicate(timeout=30)
    assert err.count("queue unavailable") >= 2, err
    assert "password=***" in err and "username=***" in err
    assert "hunter2" not in err and "bob" not in err
