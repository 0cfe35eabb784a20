"""What the queue keeps for the monitor (issue 19), on both backends (SQLite on disk, a
real redis-server): who submitted a job and from where, preview frames leased before the
rest of their job, the queue depth a worker's gauge reads cheaply; and, on SQLite, that
the status sums read the covering index."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from workers.queue import open_queue
from workers.sqlite_queue import _STATUS_SUMS, SqliteQueue
from workers.tasks import JobSpec, TaskQueue


def spec(job_id: str, *, end: int = 4, chunk: int = 1, preview: int = 0, frames: str | None = None,
         **extra: str) -> JobSpec:
    return JobSpec(job_id=job_id, name=f"shot-{job_id}", toml="seed = 1\n", base_dir="/jobs", output_root="/renders",
                   frame_start=1, frame_end=end, priority=0, chunk=chunk, video=False, max_attempts=3,
                   frames=frames, preview=preview, **extra)


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path, redis_url_factory: Callable[[], str]) -> Iterator[TaskQueue]:
    q = open_queue(f"sqlite:///{tmp_path / 'farm.db'}" if request.param == "sqlite" else redis_url_factory())
    yield q
    q.close()


def lease_all(queue: TaskQueue) -> list[tuple[str, int, int]]:
    leased = []
    while (task := queue.lease("w1", 60)) is not None:
        leased.append((task.job_id, task.first, task.last))
    return leased


@pytest.mark.parametrize(("count", "frames", "want"), [
    (0, None, []), (1, None, [1]), (2, None, [1, 10]), (3, None, [1, 5, 10]), (4, None, [1, 4, 7, 10]),
    (50, None, list(range(1, 11))), (3, "1-10x3", [1, 7, 10]), (2, "3,7-8", [3, 8]),
])
def test_preview_frames_are_spread_over_the_shot(count: int, frames: str | None, want: list[int]) -> None:
    job = spec("j", end=10, preview=count, frames=frames, chunk=3)
    assert job.preview_frames() == want
    chunks = job.chunks()
    covered = [frame for first, last in chunks for frame in range(first, last + 1)]
    assert covered == job.frame_list(), "every frame once, in order"
    assert all((frame, frame) in chunks for frame in want), "a preview frame is a task of its own"
    assert all(last - first < 3 for first, last in chunks)


def test_preview_tasks_are_leased_first_within_their_job(queue: TaskQueue) -> None:
    queue.submit(spec("early", end=2))
    queue.submit(spec("shot", end=10, chunk=3, preview=3))
    assert lease_all(queue) == [("early", 1, 1), ("early", 2, 2),   # a preview never jumps the queue's order
                                ("shot", 1, 1), ("shot", 5, 5), ("shot", 10, 10),
                                ("shot", 2, 4), ("shot", 6, 8), ("shot", 9, 9)]
    [status] = queue.status("shot")
    assert (status.leased, status.pending) == (10, 0)
    assert [(t.first, t.last) for t in queue.tasks("shot")] == [(1, 1), (2, 4), (5, 5), (6, 8), (9, 9), (10, 10)]


def test_a_requeued_preview_task_still_goes_first(queue: TaskQueue) -> None:
    queue.submit(spec("shot", end=6, chunk=2, preview=2))
    first = queue.lease("w1", 60)
    assert first is not None and (first.first, first.last) == (1, 1)
    queue.cancel("shot")
    assert queue.requeue("shot", failed_only=False) == 4
    assert [(first, last) for _job, first, last in lease_all(queue)][:2] == [(1, 1), (6, 6)]


def test_the_submitter_is_kept_with_the_job(queue: TaskQueue) -> None:
    queue.submit(spec("j1", submitted_by="alice", submitted_host="ws-12"))
    queue.submit(spec("j2"))   # a job submitted before the field (or by code that does not say)
    assert queue.job("j1") == spec("j1", submitted_by="alice", submitted_host="ws-12")
    one, two = queue.status()
    assert (one.submitted_by, one.submitted_host) == ("alice", "ws-12")
    assert (two.submitted_by, two.submitted_host) == (None, None)
    assert queue.status(job_ids=["j1"])[0].as_dict()["submitted_by"] == "alice"


def test_pending_frames_counts_every_jobs_waiting_frames(queue: TaskQueue) -> None:
    assert queue.pending_frames() == 0
    queue.submit(spec("a", end=6, chunk=2))      # 3 tasks of 2 frames
    queue.submit(spec("b", end=3))               # 3 tasks of 1 frame, paused: still waiting
    queue.submit(spec("c", end=2))               # cancelled: nothing waits
    queue.pause("b")
    queue.cancel("c")
    task = queue.lease("w1", 60)                 # a: frames 1-2 leased, then done
    assert task is not None and task.job_id == "a"
    assert queue.pending_frames() == 4 + 3
    queue.ack(task, "w1")
    failing = queue.lease("w1", 60)
    assert failing is not None
    queue.fail(failing, "w1", "boom")            # pending again (attempt 1 of 3)
    assert queue.pending_frames() == 4 + 3
    assert queue.pending_frames() == sum(job.pending for job in queue.status())


def test_sqlite_status_sums_read_only_the_covering_index(tmp_path) -> None:
    queue = SqliteQueue(tmp_path / "farm.db")
    queue.submit(spec("j1"))
    db = queue._db()
    for where, args in (("", ()), ("AND job_id IN (SELECT value FROM json_each(?))", (json.dumps(["j1"]),))):
        plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + _STATUS_SUMS.format(where=where),
                                                     (time.time(), *args)))
        assert "COVERING INDEX tasks_for_status" in plan and "TEMP B-TREE" not in plan, plan
    queue.close()


def test_a_done_jobs_counts_stay_right_as_the_job_changes_around_them(queue: TaskQueue) -> None:
    queue.submit(spec("a", end=2))
    queue.submit(spec("b", end=2))
    for task in [queue.lease("w1", 60), queue.lease("w1", 60)]:
        assert task is not None and task.job_id == "a"
        queue.ack(task, "w1")
    first = {job.job_id: job for job in queue.status()}
    assert (first["a"].state, first["a"].done, first["b"].pending) == ("done", 2, 2)
    queue.set_priority("a", 7)
    queue.ack(queue.lease("w1", 60), "w1")   # b moves on beside it
    again = {job.job_id: job for job in queue.status(job_ids=["a", "b"])}
    assert (again["a"].state, again["a"].done, again["a"].priority, again["a"].fps) == (
        "done", 2, 7, first["a"].fps)
    assert (again["b"].done, again["b"].pending) == (1, 1)
    assert queue.cancel("a") == 0
    [cancelled] = queue.status("a")
    assert (cancelled.state, cancelled.done, cancelled.cancelled) == ("cancelled", 2, 0)
