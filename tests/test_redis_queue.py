"""What only the Redis backend has: its streams, its dead-letter stream and a URL that
may carry a password (tests/test_queue_contract.py checks the shared semantics)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from pipeline.errors import JobError
from workers.queue import open_queue
from workers.tasks import JobSpec, QueueUnavailable

redis = pytest.importorskip("redis")   # a dependency of the package; absent on bare GPU machines


def spec(job_id: str, *, end: int = 4, max_attempts: int = 3) -> JobSpec:
    return JobSpec(job_id=job_id, name=f"shot-{job_id}", toml="seed = 1\n", base_dir="/jobs",
                   output_root="/renders", frame_start=1, frame_end=end, priority=0, chunk=2,
                   video=False, max_attempts=max_attempts)


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def test_an_unreachable_server_is_unavailable_and_the_password_stays_hidden() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(QueueUnavailable) as caught:
        open_queue(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_repr_and_refusals_hide_the_password(redis_server: int) -> None:
    url = f"redis://default:hunter2@127.0.0.1:{redis_server}/3"
    try:  # a server without a password lets any password in (Redis 7); older ones refuse it
        queue = open_queue(url)
        shown = repr(queue)
        queue.close()
    except JobError as err:
        shown = str(err)
    assert "hunter2" not in shown and "***" in shown


def test_skipped_jobs_are_never_delivered(redis_url_factory: Callable[[], str]) -> None:
    url = redis_url_factory()
    queue = open_queue(url)
    queue.submit(spec("a"))
    queue.submit(spec("b"))
    task = queue.lease("w1", 30, skip_jobs=frozenset({"a"}))
    assert task.job_id == "b"
    assert client(url).xpending("ff:job:a:stream", "farm")["pending"] == 0
    assert queue.lease("w2", 30).job_id == "a", "a skipped job keeps its place"
    queue.close()


def test_renew_resets_the_idle_time_of_its_entry(redis_url_factory: Callable[[], str]) -> None:
    url = redis_url_factory()
    queue = open_queue(url)
    queue.submit(spec("j1", end=2))
    task = queue.lease("w1", 30)
    time.sleep(0.3)
    [before] = client(url).xpending_range("ff:job:j1:stream", "farm", "-", "+", 10)
    assert queue.renew(task, "w1", 30)
    [after] = client(url).xpending_range("ff:job:j1:stream", "farm", "-", "+", 10)
    assert after["consumer"] == "w1" and after["time_since_delivered"] < before["time_since_delivered"]
    queue.close()


def test_dead_letters_go_to_the_dead_stream(redis_url_factory: Callable[[], str]) -> None:
    url = redis_url_factory()
    queue = open_queue(url)
    queue.submit(spec("j1", end=2, max_attempts=1))
    assert queue.fail(queue.lease("w1", 30), "w1", "ValueError: poison")
    [(_id, entry)] = client(url).xrange("ff:dead")
    assert (entry["job"], entry["first"], entry["last"], entry["error"]) == ("j1", "1", "2", "ValueError: poison")
    queue.close()


def test_requeue_of_unfinished_work_fences_the_holder(redis_url_factory: Callable[[], str]) -> None:
    queue = open_queue(redis_url_factory())
    queue.submit(spec("j1", end=4))
    held = queue.lease("w1", 30)
    assert queue.requeue("j1", failed_only=False) == 2
    assert not queue.renew(held, "w1", 30)
    again = [queue.lease("w2", 30) for _ in range(2)]
    assert [(t.first, t.attempt) for t in again] == [(1, 1), (3, 1)]
    assert again[0].token != held.token
    queue.close()
