"""Video segment tasks in the queue, on both backends (SQLite on disk, a real
redis-server): a segment task waits for the frames tasks that overlap it, is queued by
the ack that finishes them, runs once however its lease ends, and the video task (the
join) follows the last of them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from workers.queue import open_queue
from workers.tasks import TASK_FRAMES, TASK_SEGMENT, TASK_VIDEO, JobSpec, Task, TaskQueue

LEASE_S = 0.4


def spec(job_id: str = "j1", *, end: int = 6, chunk: int = 2, segments: tuple[tuple[int, int], ...] = ((1, 3), (4, 6)),
         max_attempts: int = 3) -> JobSpec:
    return JobSpec(job_id=job_id, name=f"shot-{job_id}", toml="seed = 1\n", base_dir="/jobs", output_root="/renders",
                   frame_start=1, frame_end=end, priority=0, chunk=chunk, video=True, max_attempts=max_attempts,
                   segments=segments)


@pytest.fixture(params=["sqlite", "redis"])
def queue(request: pytest.FixtureRequest, tmp_path, redis_url_factory: Callable[[], str]) -> Iterator[TaskQueue]:
    url = f"sqlite:///{tmp_path / 'farm.db'}" if request.param == "sqlite" else redis_url_factory()
    q = open_queue(url)
    yield q
    q.close()


def lease_all(q: TaskQueue, worker: str = "w1") -> list[Task]:
    tasks = []
    while (task := q.lease(worker, 30)) is not None:
        tasks.append(task)
    return tasks


def by_range(tasks: list[Task]) -> dict[tuple[str, int, int], Task]:
    return {(t.kind, t.first, t.last): t for t in tasks}


def test_segment_ranges_wait_for_the_frames_tasks_that_overlap_them() -> None:
    assert spec().segment_waits(spec().chunks()) == [[0, 1], [1, 2]]   # chunks 1-2, 3-4, 5-6
    # the indices follow the order the queue stores the tasks in (preview frames first)
    previewed = JobSpec.from_dict(spec().as_dict() | {"preview": 2})   # frames 1 and 6 first
    ordered = [chunk for chunk, _ in previewed.preview_first()]
    assert ordered == [(1, 1), (6, 6), (2, 3), (4, 5)]
    assert previewed.segment_waits(ordered) == [[0, 2], [1, 3]]
    assert JobSpec.from_dict(spec().as_dict() | {"segments": [[1, 3], [4, 6]]}) == spec()


def test_a_segment_is_queued_when_its_frames_are_done_and_the_join_follows_the_last(queue: TaskQueue) -> None:
    queue.submit(spec())
    frames = by_range(lease_all(queue))
    assert sorted(frames) == [(TASK_FRAMES, 1, 2), (TASK_FRAMES, 3, 4), (TASK_FRAMES, 5, 6)], "segments wait"
    [status] = queue.status("j1")
    assert (status.segments, status.video) == ({"waiting": 2}, None)
    assert queue.ack(frames[TASK_FRAMES, 1, 2], "w1")
    assert queue.lease("w1", 30) is None, "segment 1-3 still waits for frames 3-4"
    assert queue.ack(frames[TASK_FRAMES, 3, 4], "w1")
    first = queue.lease("w2", 30)
    assert first is not None and (first.kind, first.first, first.last) == (TASK_SEGMENT, 1, 3)
    assert queue.lease("w1", 30) is None
    assert queue.ack(frames[TASK_FRAMES, 5, 6], "w1")
    second = queue.lease("w1", 30)
    assert second is not None and (second.kind, second.first, second.last) == (TASK_SEGMENT, 4, 6)
    [status] = queue.status("j1")
    assert (status.done, status.segments) == (6, {"leased": 2})
    assert queue.ack(second, "w1")
    assert queue.lease("w1", 30) is None, "the video task waits for every segment"
    assert queue.ack(first, "w2")
    video = queue.lease("w1", 30)
    assert video is not None and (video.kind, video.first, video.last) == (TASK_VIDEO, 1, 6)
    [status] = queue.status("j1")
    assert (status.state, status.segments, status.video) == ("active", {"done": 2}, "leased")
    assert queue.ack(video, "w1")
    [status] = queue.status("j1")
    assert (status.state, status.segments, status.video) == ("done", {"done": 2}, "done")
    workers = {(t.kind, t.first): t.worker for t in queue.tasks("j1")}
    assert (workers[TASK_SEGMENT, 1], workers[TASK_SEGMENT, 4]) == ("w2", "w1")


def test_an_expired_segment_lease_is_taken_over_once_and_fences_the_first(queue: TaskQueue) -> None:
    queue.submit(spec(end=2, segments=((1, 2),)))
    [frames] = lease_all(queue)
    assert queue.ack(frames, "w1")
    lost = queue.lease("w1", LEASE_S)
    assert lost is not None and lost.kind == TASK_SEGMENT
    time.sleep(LEASE_S + 0.3)
    again = queue.lease("w2", 30)
    assert again is not None and (again.task_id, again.attempt) == (lost.task_id, 2)
    assert not queue.ack(lost, "w1"), "the first lease is fenced off"
    assert queue.ack(again, "w2")
    assert not queue.ack(again, "w2"), "a segment task is acknowledged once"
    video = queue.lease("w1", 30)
    assert video is not None and video.kind == TASK_VIDEO
    assert [t.kind for t in queue.tasks("j1")].count(TASK_SEGMENT) == 1


def test_cancel_drops_waiting_segments_and_requeue_makes_them_wait_again(queue: TaskQueue) -> None:
    queue.submit(spec())
    frames = by_range(lease_all(queue))
    assert queue.ack(frames[TASK_FRAMES, 1, 2], "w1")
    assert queue.ack(frames[TASK_FRAMES, 3, 4], "w1")
    assert queue.cancel("j1") == 3   # frames 5-6 (leased) and both segments (one pending, one waiting)
    [status] = queue.status("j1")
    assert status.segments == {"cancelled": 2}
    assert queue.requeue("j1", failed_only=False) == 3
    again = by_range(lease_all(queue))
    assert sorted(again) == [(TASK_FRAMES, 5, 6), (TASK_SEGMENT, 1, 3)], "4-6 waits for frames 5-6 again"
    [status] = queue.status("j1")
    assert status.segments == {"leased": 1, "waiting": 1}


def test_a_failed_segment_names_itself_in_status(queue: TaskQueue) -> None:
    queue.submit(spec(end=2, segments=((1, 2),), max_attempts=1))
    [frames] = lease_all(queue)
    assert queue.ack(frames, "w1")
    segment = queue.lease("w1", 30)
    assert segment is not None and queue.fail(segment, "w1", "frame 2 is not published")
    [status] = queue.status("j1")
    assert status.state == "failed"
    assert status.errors == [{"first": 1, "last": 2, "error": "frame 2 is not published", "kind": TASK_SEGMENT}]
