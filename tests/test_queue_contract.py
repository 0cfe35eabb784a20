"""The queue contract (workers/queue.py), run against every backend: SQLite on disk and
a real redis-server on a loopback port."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from workers.queue import open_queue
from workers.tasks import TASK_VIDEO, JobSpec, TaskQueue

LEASE_S = 0.4   # short, so expiry tests wait well under a second


def spec(job_id: str, *, start: int = 1, end: int = 4, chunk: int = 2, priority: int = 0,
         video: bool = False, max_attempts: int = 3) -> JobSpec:
    return JobSpec(job_id=job_id, name=f"shot-{job_id}", toml='seed = 1\n', base_dir="/jobs",
                   output_root="/renders", frame_start=start, frame_end=end, priority=priority,
                   chunk=chunk, video=video, max_attempts=max_attempts)


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path, redis_url_factory: Callable[[], str]
          ) -> Iterator[TaskQueue]:
    url = f"sqlite:///{tmp_path / 'farm.db'}" if request.param == "sqlite" else redis_url_factory()
    q = open_queue(url)
    yield q
    q.close()


def drain(q: TaskQueue, worker: str = "w1") -> list:
    tasks = []
    while (task := q.lease(worker, 30)) is not None:
        tasks.append(task)
    return tasks


def test_submit_and_job_round_trip(queue: TaskQueue) -> None:
    queue.submit(spec("j1"))
    assert queue.job("j1") == spec("j1")
    assert queue.job("nope") is None


def test_lease_order_priority_then_submission_then_frames(queue: TaskQueue) -> None:
    queue.submit(spec("low", priority=0))
    queue.submit(spec("high", priority=5, end=3))
    queue.submit(spec("low2", priority=0, end=2))
    order = [(t.job_id, t.first, t.last) for t in drain(queue)]
    assert order == [("high", 1, 2), ("high", 3, 3), ("low", 1, 2), ("low", 3, 4), ("low2", 1, 2)]
    assert queue.lease("w1", 30) is None


def test_ack_needs_the_current_lease(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=2))
    task = queue.lease("w1", 30)
    assert task is not None and task.attempt == 1
    assert queue.renew(task, "w1", 30)
    assert queue.ack(task, "w1")
    assert not queue.ack(task, "w1"), "a task is acknowledged once"
    [status] = queue.status("j1")
    assert (status.done, status.leased, status.pending, status.failed) == (2, 0, 0, 0)
    assert status.state == "done"


def test_expired_lease_goes_to_another_worker_and_fences_the_first(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=2))
    first = queue.lease("w1", LEASE_S)
    assert queue.lease("w2", LEASE_S) is None
    time.sleep(LEASE_S + 0.3)
    second = queue.lease("w2", 30)
    assert second is not None and second.task_id == first.task_id
    assert second.attempt == 2 and second.token != first.token
    assert not queue.renew(first, "w1", 30)
    assert not queue.ack(first, "w1")
    assert not queue.fail(first, "w1", "late")
    assert queue.ack(second, "w2")


def test_renewal_keeps_a_task_from_being_stolen(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=2))
    task = queue.lease("w1", LEASE_S)
    for _ in range(4):
        time.sleep(LEASE_S / 2)
        assert queue.renew(task, "w1", LEASE_S)
        assert queue.lease("w2", LEASE_S) is None
    assert queue.ack(task, "w1")


def test_failures_retry_then_dead_letter_with_the_error(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=2, max_attempts=2))
    task = queue.lease("w1", 30)
    assert not queue.fail(task, "w1", "CUDA error: first")
    retry = queue.lease("w2", 30)
    assert retry is not None and retry.task_id == task.task_id and retry.attempt == 2
    assert queue.fail(retry, "w2", "ValueError: poison frame")
    assert queue.lease("w3", 30) is None
    [status] = queue.status("j1")
    assert (status.failed, status.pending, status.done) == (2, 0, 0)
    assert status.errors == [{"first": 1, "last": 2, "error": "ValueError: poison frame"}]


def test_a_task_that_keeps_losing_its_worker_is_dead_lettered(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=1, max_attempts=2))
    assert queue.lease("w1", LEASE_S) is not None
    time.sleep(LEASE_S + 0.3)
    assert queue.lease("w2", LEASE_S) is not None       # attempt 2
    time.sleep(LEASE_S + 0.3)
    assert queue.lease("w3", LEASE_S) is None           # would be attempt 3: dead
    [status] = queue.status("j1")
    assert status.failed == 1
    assert "lease expired" in status.errors[0]["error"]
    assert status.state == "failed"


def test_a_job_with_dead_lettered_tasks_is_failed_until_requeued(queue: TaskQueue) -> None:
    """Such a job used to stay "active" for ever (issue 15, item 11): nothing was left to
    run, yet it looked like work in progress."""
    queue.submit(spec("j1", end=4, chunk=2, max_attempts=1))
    first, second = queue.lease("w1", 30), queue.lease("w2", 30)
    assert queue.fail(first, "w1", "ValueError: poison frame")
    assert queue.status("j1")[0].state == "active", "frames 3-4 are still rendering"
    assert queue.ack(second, "w2")
    [status] = queue.status("j1")
    assert (status.state, status.failed, status.done, status.pending, status.leased) == ("failed", 2, 2, 0, 0)
    assert queue.requeue("j1", failed_only=True) == 1
    assert queue.status("j1")[0].state == "active"
    assert queue.ack(queue.lease("w3", 30), "w3")
    assert queue.status("j1")[0].state == "done"
    queue.submit(spec("j2", end=2, video=True, max_attempts=1))
    assert queue.ack(queue.lease("w1", 30), "w1")
    video = queue.lease("w1", 30)
    assert video is not None and video.kind == TASK_VIDEO
    assert queue.fail(video, "w1", "OSError: disk full")
    [status] = queue.status("j2")
    assert (status.state, status.done, status.failed) == ("failed", 2, 0)
    assert status.errors == [{"first": 1, "last": 2, "error": "OSError: disk full", "kind": "video"}]


def test_release_gives_back_without_counting_an_attempt(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=2))
    task = queue.lease("w1", 30)
    queue.release(task, "w1")
    again = queue.lease("w2", 30)
    assert again.task_id == task.task_id and again.attempt == 1


def test_video_task_follows_the_last_frames(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=4, video=True))
    a, b = queue.lease("w1", 30), queue.lease("w2", 30)
    assert queue.lease("w3", 30) is None
    assert queue.ack(b, "w2")
    assert queue.lease("w3", 30) is None, "no video before every frame is done"
    assert queue.ack(a, "w1")
    video = queue.lease("w3", 30)
    assert video is not None and video.kind == TASK_VIDEO and (video.first, video.last) == (1, 4)
    assert queue.ack(video, "w3")
    [status] = queue.status("j1")
    assert status.state == "done" and status.done == 4


def test_cancel_drops_pending_and_fences_leased(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=6))
    leased = queue.lease("w1", 30)
    assert queue.cancel("j1") >= 2
    assert queue.lease("w2", 30) is None
    assert not queue.renew(leased, "w1", 30)
    assert not queue.ack(leased, "w1")
    [status] = queue.status("j1")
    assert status.state == "cancelled"


def test_requeue_failed(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=2, max_attempts=1))
    assert queue.fail(queue.lease("w1", 30), "w1", "boom")
    assert queue.requeue("j1", failed_only=True) == 1
    task = queue.lease("w2", 30)
    assert task is not None and task.attempt == 1
    assert queue.ack(task, "w2")


def test_status_counts_frames_and_skip_jobs(queue: TaskQueue) -> None:
    queue.submit(spec("a", end=6, chunk=2))
    queue.submit(spec("b", end=3, chunk=3))
    first = queue.lease("w1", 30, skip_jobs=frozenset({"a"}))
    assert first.job_id == "b"
    t = queue.lease("w1", 30)
    queue.ack(t, "w1")
    queue.lease("w1", 30)
    by_id = {s.job_id: s for s in queue.status()}
    assert (by_id["a"].done, by_id["a"].leased, by_id["a"].pending) == (2, 2, 2)
    assert (by_id["b"].leased, by_id["b"].pending) == (3, 0)


def test_heartbeats_list_workers(queue: TaskQueue) -> None:
    queue.heartbeat("host-1/gpu0", {"device": "cuda:0", "frames_done": 3})
    [worker] = queue.workers()
    assert worker.name == "host-1/gpu0" and worker.info["frames_done"] == 3
    assert abs(worker.heartbeat - time.time()) < 5


def test_concurrent_leases_never_share_a_task(queue: TaskQueue, tmp_path) -> None:
    queue.submit(spec("j1", end=40, chunk=1))
    got: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        q = queue  # backends are safe to share between threads
        while (task := q.lease(name, 30)) is not None:
            with lock:
                got.append(task.task_id)
            assert q.ack(task, name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 40 and len(set(got)) == 40


# -- the per-worker blocklist: kept by the queue, shown by status, lifted by requeue

def test_a_worker_blocklisted_on_a_job_takes_it_again_after_requeue(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=4, chunk=1, max_attempts=10))
    task = queue.lease("w1", 30)
    assert not queue.fail(task, "w1", "CUDA error: one", block_after=2)
    [status] = queue.status("j1")
    assert status.blocked == [], "one failure is below the threshold"
    task = queue.lease("w1", 30)
    assert not queue.fail(task, "w1", "CUDA error: two", block_after=2)
    assert queue.lease("w1", 30) is None, "a blocklisted worker is not offered the job"
    [status] = queue.status("j1")
    assert status.blocked == [{"worker": "w1", "failures": 2}]
    assert status.pending == 4
    other = queue.lease("w2", 30)
    assert other is not None and other.job_id == "j1", "other workers still get it"
    queue.release(other, "w2")
    assert queue.requeue("j1", failed_only=True) == 0      # nothing failed for good, but the block is lifted
    [status] = queue.status("j1")
    assert status.blocked == []
    again = queue.lease("w1", 30)
    assert again is not None and again.job_id == "j1"
    assert not queue.fail(again, "w1", "CUDA error: three", block_after=2), "the count starts afresh"
    assert queue.lease("w1", 30) is not None


def test_failures_without_a_threshold_block_nobody(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=2, chunk=1, max_attempts=10))
    for _ in range(3):
        assert not queue.fail(queue.lease("w1", 30), "w1", "boom")
    [status] = queue.status("j1")
    assert status.blocked == []
    assert queue.lease("w1", 30) is not None


# -- cancel: holds, stopping, and what the worker published

def test_holds_reads_the_lease_without_extending_it(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=4))
    task = queue.lease("w1", LEASE_S)
    assert queue.holds(task, "w1")
    assert not queue.holds(task, "w2")
    time.sleep(LEASE_S + 0.3)
    taken = queue.lease("w2", 30)
    assert taken is not None and taken.task_id == task.task_id, "holds did not extend the lease"
    assert not queue.holds(task, "w1")
    assert queue.holds(taken, "w2")
    queue.cancel("j1")
    assert not queue.holds(taken, "w2")


def test_a_task_cancelled_while_leased_is_stopping_until_its_worker_reports(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=6, chunk=2))
    first, second = queue.lease("w1", 30), queue.lease("w2", 30)
    assert queue.ack(second, "w2")
    assert queue.cancel("j1") == 2                       # first (leased) and frames 5-6 (pending)
    [status] = queue.status("j1")
    assert (status.state, status.done, status.stopping, status.cancelled, status.leased) == ("cancelled", 2, 2, 2, 0)
    assert not queue.record_stopped(first, "w2", 1), "only the worker that held it reports"
    stale = dataclasses.replace(first, token=first.token + 1)
    assert not queue.record_stopped(stale, "w1", 1)
    assert queue.record_stopped(first, "w1", 1)
    [status] = queue.status("j1")
    assert (status.done, status.stopping, status.cancelled) == (3, 0, 3), "done counts what lies on disk"
    assert queue.requeue("j1", failed_only=False) == 2
    [status] = queue.status("j1")
    assert (status.state, status.done, status.pending, status.cancelled) == ("active", 2, 4, 0)
    assert not queue.record_stopped(first, "w1", 2), "a report after a requeue is stale"


def test_stopping_ends_when_the_lease_would_have(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=2))
    queue.lease("w1", LEASE_S)
    queue.cancel("j1")
    assert queue.status("j1")[0].stopping == 2
    time.sleep(LEASE_S + 0.3)
    [status] = queue.status("j1")
    assert (status.stopping, status.cancelled, status.done) == (0, 2, 0)


# -- workers: gone, dropped, removed

def test_workers_go_quiet_then_gone_then_dropped_and_a_clean_exit_removes_at_once(queue: TaskQueue) -> None:
    quick = {"heartbeat_s": 0.1, "lease_s": 0.2, "frames_done": 1}
    queue.heartbeat("quick", quick)
    queue.heartbeat("steady", {"frames_done": 2})        # defaults: every 5 s, leases of 60 s
    by_name = {w.name: w for w in queue.workers()}
    assert by_name["quick"].state == "running" and by_name["quick"].age < 5
    time.sleep(0.5)
    by_name = {w.name: w for w in queue.workers()}
    assert by_name["quick"].state == "gone" and by_name["quick"].age >= 0.4
    assert by_name["steady"].state == "running"
    queue.remove_worker("steady")
    assert [w.name for w in queue.workers()] == ["quick"]
    queue.worker_drop_s = 0.3                           # an hour in use
    assert queue.workers() == [], "past the drop time a worker is no longer listed"
    queue.heartbeat("late", {})                         # any heartbeat drops the silent ones from the queue
    queue.worker_drop_s = 3600.0
    assert [w.name for w in queue.workers()] == ["late"]


# -- what `render monitor` reads and steers (issue 19)

def test_tasks_show_attempts_worker_times_and_error(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=2, chunk=2, max_attempts=3))
    queue.submit(spec("j2", end=4, chunk=2))
    assert queue.fail(queue.lease("w1", 30), "w1", "out of memory") is False   # pending again
    queue.ack(queue.lease("w2", 30), "w2")
    queue.fail(queue.lease("w3", 30, skip_jobs=frozenset({"j1"})), "w3", "disk full")
    [done] = queue.tasks("j1")
    assert (done.first, done.last, done.state, done.attempts, done.worker, done.error) == (
        1, 2, "done", 2, "w2", None)
    retried, untouched = queue.tasks("j2")
    assert (retried.first, retried.state, retried.attempts, retried.worker, retried.error) == (
        1, "pending", 1, "w3", "disk full")
    assert (untouched.first, untouched.state, untouched.attempts, untouched.worker) == (3, "pending", 0, None)
    assert done.started is not None and done.finished is not None and done.finished >= done.started
    assert abs(done.finished - time.time()) < 5   # seconds since the epoch on both backends
    assert retried.finished is not None and untouched.started is None
    held = queue.lease("w4", 30, skip_jobs=frozenset({"j1"}))
    [now_leased] = [t for t in queue.tasks("j2") if t.task_id == held.task_id]
    assert now_leased.state == "leased" and now_leased.worker == "w4" and now_leased.finished is None
    assert queue.tasks("nope") == []


def test_status_has_submitted_time_rate_and_eta(queue: TaskQueue) -> None:
    queue.submit(spec("j1", end=4, chunk=1))
    [before] = queue.status("j1")
    assert before.fps is None and before.eta_s is None
    assert before.submitted is not None and abs(before.submitted - time.time()) < 5
    task = queue.lease("w1", 30)
    time.sleep(0.05)
    queue.ack(task, "w1")
    [after] = queue.status("j1")
    assert after.fps is not None and 0 < after.fps < 1 / 0.05 + 1
    assert after.eta_s == pytest.approx(3 / after.fps)


def test_priority_change_reorders_leases(queue: TaskQueue) -> None:
    queue.submit(spec("a", end=2, chunk=1))
    queue.submit(spec("b", end=2, chunk=1))
    assert queue.set_priority("b", 5)
    assert queue.lease("w1", 30).job_id == "b"
    assert queue.status("b")[0].priority == 5
    assert queue.set_priority("a", 9) and queue.lease("w1", 30).job_id == "a"
    assert not queue.set_priority("nope", 1)


def test_a_paused_job_hands_out_nothing_but_its_leased_tasks_finish(queue: TaskQueue) -> None:
    queue.submit(spec("a", end=4, chunk=1))
    held = queue.lease("w1", 30)
    assert queue.pause("a") and not queue.pause("a")
    assert queue.status("a")[0].state == "paused"
    assert queue.lease("w2", 30) is None
    assert queue.renew(held, "w1", 30) and queue.ack(held, "w1")
    assert queue.resume("a") and not queue.resume("a")
    assert queue.status("a")[0].state == "active"
    assert queue.lease("w2", 30).job_id == "a"
    assert not queue.pause("nope") and not queue.resume("nope")


def test_a_requeued_paused_job_stays_paused(queue: TaskQueue) -> None:
    queue.submit(spec("a", end=2, chunk=1, max_attempts=1))
    queue.fail(queue.lease("w1", 30), "w1", "boom")
    assert queue.pause("a")
    assert queue.requeue("a", failed_only=True) == 1
    assert queue.status("a")[0].state == "paused" and queue.lease("w1", 30) is None
    assert queue.resume("a") and queue.lease("w1", 30) is not None


def test_drain_is_told_at_the_workers_heartbeat(queue: TaskQueue) -> None:
    assert not queue.drain("w1")                       # unknown worker: nothing stored
    assert queue.heartbeat("w1", {}) is False
    assert queue.drain("w1")
    assert queue.heartbeat("w1", {}) is True
    assert queue.heartbeat("w2", {}) is False
    queue.remove_worker("w1")
    assert queue.heartbeat("w1", {}) is False          # a new worker of that name is not drained


def test_job_states_and_status_of_some_jobs(queue: TaskQueue) -> None:
    for job_id in ("a", "b", "c", "d"):
        queue.submit(spec(job_id, end=2, chunk=1, max_attempts=1))
    queue.cancel("b")
    queue.pause("c")
    queue.fail(queue.lease("w1", 30), "w1", "boom")      # a: one frame failed, one pending
    assert queue.job_states() == [("a", "active"), ("b", "cancelled"), ("c", "paused"), ("d", "active")]
    some = queue.status(job_ids=["d", "a", "nope"])
    assert [job.job_id for job in some] == ["a", "d"]     # submission order; unknown ids left out
    assert [(job.done, job.pending, job.failed) for job in some] == [(0, 1, 1), (0, 2, 0)]
    assert some == [job for job in queue.status() if job.job_id in ("a", "d")]
    assert queue.status(job_ids=[]) == []


def test_a_queue_file_from_before_the_monitor_gains_its_columns(tmp_path) -> None:
    import sqlite3

    from workers.sqlite_queue import SqliteQueue

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:   # the tables as they were before issue 19
        db.executescript("""
            CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, spec TEXT NOT NULL,
                               priority INTEGER NOT NULL, max_attempts INTEGER NOT NULL, state TEXT NOT NULL);
            CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, kind TEXT NOT NULL,
                                first INTEGER NOT NULL, last INTEGER NOT NULL, state TEXT NOT NULL,
                                attempts INTEGER NOT NULL DEFAULT 0, token INTEGER NOT NULL DEFAULT 0,
                                lease_until REAL, worker TEXT, error TEXT, published INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE workers (name TEXT PRIMARY KEY, heartbeat REAL NOT NULL, info TEXT NOT NULL);""")
        db.execute("INSERT INTO jobs (id, spec, priority, max_attempts, state) VALUES (?, ?, 0, 3, 'active')",
                   ("old", json.dumps(dataclasses.asdict(spec("old", end=2, chunk=1)))))
        db.executemany("INSERT INTO tasks (job_id, kind, first, last, state) VALUES ('old', 'frames', ?, ?, ?)",
                       [(1, 1, "done"), (2, 2, "pending")])
    queue = SqliteQueue(path, create=False)
    [old] = queue.status()
    assert (old.done, old.pending, old.submitted, old.fps) == (1, 1, None, None)
    assert [(t.state, t.started) for t in queue.tasks("old")] == [("done", None), ("pending", None)]
    task = queue.lease("w1", 30)
    assert task.first == 2 and queue.ack(task, "w1") and queue.heartbeat("w1", {}) is False
    queue.close()


def test_an_idempotency_key_queues_one_job(queue: TaskQueue) -> None:
    assert queue.submit(spec("first"), idempotency_key="shot-42/take-3") == "first"
    assert queue.submit(spec("again"), idempotency_key="shot-42/take-3") == "first"   # nothing stored
    assert queue.job("again") is None
    assert queue.submit(spec("other"), idempotency_key="shot-43") == "other"
    assert queue.submit(spec("plain")) == "plain"
    assert [job.job_id for job in queue.status()] == ["first", "other", "plain"]
    assert queue.status("first")[0].pending == 4


def test_racing_submits_with_one_key_queue_one_job(queue: TaskQueue) -> None:
    ids: list[str] = []   # each thread has its own connection (SQLite: per thread; Redis: from the pool)

    def submit(job_id: str) -> None:
        ids.append(queue.submit(spec(job_id), idempotency_key="the-key"))

    threads = [threading.Thread(target=submit, args=(f"racer{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert [job.job_id for job in queue.status()] == ids[:1]


def test_a_job_of_some_frames_is_chunked_within_its_runs(queue: TaskQueue) -> None:
    queue.submit(dataclasses.replace(spec("stepped", end=6, chunk=2), frames="1-5x2"))
    queue.submit(dataclasses.replace(spec("listed", end=9, chunk=3), frames="1-4,7,9-8"))
    assert [(t.first, t.last) for t in queue.tasks("stepped")] == [(1, 1), (3, 3), (5, 5)]
    assert [(t.first, t.last) for t in queue.tasks("listed")] == [(1, 3), (4, 4), (7, 9)]
    assert queue.job("listed").frames == "1-4,7,9-8"
    assert queue.status("listed")[0].pending == 7


def test_task_logs_keep_each_attempt_and_their_last_64_kib(queue: TaskQueue) -> None:
    from workers.tasks import LOG_CHARS

    queue.submit(spec("j1", end=2, chunk=1))
    first, second = (t.task_id for t in queue.tasks("j1"))
    assert queue.task_log("j1", first) == ""
    queue.store_log("j1", first, "--- attempt 1\nframe 1: out of memory\n")
    queue.store_log("j1", first, "--- attempt 2 ✓\n")
    assert queue.task_log("j1", first) == "--- attempt 1\nframe 1: out of memory\n--- attempt 2 ✓\n"
    queue.store_log("j1", second, "é" * LOG_CHARS + "the end\n")   # characters, not bytes, are kept
    assert queue.task_log("j1", second) == ("é" * LOG_CHARS + "the end\n")[-LOG_CHARS:]
    queue.store_log("j1", "999", "nobody's")                        # no such task: nothing stored
    assert queue.task_log("j1", "999") is None and queue.task_log("nope", first) is None
    # ids are ASCII digits below 2**63: full-width digits name no task, nor does a number SQLite cannot hold
    wide = "".join(chr(ord("０") + int(digit)) for digit in first)
    queue.store_log("j1", wide, "not this task's\n")
    assert queue.task_log("j1", wide) is None and queue.task_log("j1", str(2**63)) is None
    assert queue.task_log("j1", first) == "--- attempt 1\nframe 1: out of memory\n--- attempt 2 ✓\n"


def test_a_webhook_event_is_claimed_once_across_threads(queue: TaskQueue) -> None:
    """`claim_notice`: of many workers finishing the same job, exactly one sends its event."""
    from concurrent.futures import ThreadPoolExecutor

    queue.submit(spec("a", end=2, chunk=1))
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda _: queue.claim_notice("a", "done"), range(8)))
    assert claims.count(True) == 1
    assert queue.claim_notice("a", "failed")          # another event of the job: its own claim
    assert not queue.claim_notice("a", "failed")
