"""`render monitor`'s JSON API (issue 19) over HTTP, against a real monitor process on
both queue backends (SQLite on disk, a real redis-server): reads, actions, and bad
requests that are refused with a clear message and change nothing."""

from __future__ import annotations

import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator

import pytest
from helpers import free_port, http, render, running_monitor

from workers.queue import open_queue
from workers.tasks import JobSpec, TaskQueue

TOKEN = "s3cret-token"


def spec(job_id: str, *, end: int = 4, priority: int = 0, max_attempts: int = 1) -> JobSpec:
    return JobSpec(job_id=job_id, name=f"shot-{job_id}", toml="seed = 1\n", base_dir="/jobs", output_root="/renders",
                   frame_start=1, frame_end=end, priority=priority, chunk=1, video=False, max_attempts=max_attempts)


@pytest.fixture(params=["sqlite", "redis"])
def farm(request: pytest.FixtureRequest, tmp_path, redis_url_factory: Callable[[], str]
         ) -> Iterator[tuple[str, TaskQueue]]:
    """A queue with three jobs: a (one frame done, one failed, one leased), b (untouched), c (done)."""
    url = f"sqlite:///{tmp_path / 'farm.db'}" if request.param == "sqlite" else redis_url_factory()
    queue = open_queue(url)
    for job_id in ("a", "b", "c"):
        queue.submit(spec(job_id, end=1 if job_id == "c" else 4))
    queue.ack(queue.lease("w1", 60, skip_jobs=frozenset({"a", "b"})), "w1")          # c: done
    first = queue.lease("w1", 60)
    time.sleep(0.02)   # a measurable render time (Redis keeps milliseconds)
    queue.ack(first, "w1")                                                            # a: frame 1 done
    queue.fail(queue.lease("w1", 60), "w1", "CUDA out of memory on frame 2")          # a: frame 2 failed
    queue.lease("w2", 60)                                                             # a: frame 3 leased
    queue.heartbeat("host-1/77/cuda:0", {"device": "cuda:0", "frames_done": 2, "heartbeat_s": 5, "lease_s": 60})
    yield url, queue
    queue.close()


def snapshot(queue: TaskQueue) -> list:
    return [(job.as_dict(), [t.as_dict() for t in queue.tasks(job.job_id)]) for job in queue.status()]


def test_reads(farm: tuple[str, TaskQueue]) -> None:
    url, queue = farm
    with running_monitor(url) as base:
        status, jobs = http("GET", base + "/api/jobs")
        assert status == 200 and jobs["total"] == 3
        assert [job["job_id"] for job in jobs["jobs"]] == ["c", "b", "a"]        # newest first
        a = jobs["jobs"][2]
        assert (a["done"], a["failed"], a["leased"], a["pending"], a["frames"], a["state"]) == (1, 1, 1, 1, 4, "active")
        assert a["errors"] == [{"first": 2, "last": 2, "error": "CUDA out of memory on frame 2"}]
        assert a["fps"] > 0 and a["eta_s"] == pytest.approx(2 / a["fps"])
        assert [job["job_id"] for job in http("GET", base + "/api/jobs?state=done")[1]["jobs"]] == ["c"]
        assert http("GET", base + "/api/jobs?limit=1")[1]["jobs"][0]["job_id"] == "c"

        status, job = http("GET", base + "/api/jobs/a")
        assert status == 200 and job["job_file"] == "seed = 1\n" and (job["frame_start"], job["frame_end"]) == (1, 4)
        status, tasks = http("GET", base + "/api/jobs/a/tasks")
        assert status == 200
        shown = [(t["first"], t["state"], t["attempts"], t["worker"], t["error"]) for t in tasks["tasks"]]
        assert shown == [(1, "done", 1, "w1", None), (2, "failed", 1, "w1", "CUDA out of memory on frame 2"),
                         (3, "leased", 1, "w2", None), (4, "pending", 0, None, None)]
        assert tasks["tasks"][0]["duration_s"] >= 0 and tasks["tasks"][2]["duration_s"] is None

        failed_task = tasks["tasks"][1]["task_id"]
        queue.store_log("a", failed_task, "--- attempt 1 on worker w1\nCUDA out of memory on frame 2\n")
        status, log = http("GET", f"{base}/api/jobs/a/tasks/{failed_task}/log")
        assert (status, log["log"]) == (200, "--- attempt 1 on worker w1\nCUDA out of memory on frame 2\n")
        assert http("GET", f"{base}/api/jobs/a/tasks/{tasks['tasks'][3]['task_id']}/log")[1]["log"] == ""

        status, workers = http("GET", base + "/api/workers")
        [worker] = workers["workers"]
        assert (worker["name"], worker["device"], worker["state"], worker["frames_done"]) == (
            "host-1/77/cuda:0", "cuda:0", "running", 2)


def test_actions_need_the_token_and_a_refusal_changes_nothing(farm: tuple[str, TaskQueue]) -> None:
    url, queue = farm
    before = snapshot(queue)
    with running_monitor(url, token=TOKEN) as base:
        for action, body in [("requeue", {}), ("cancel", {}), ("priority", {"priority": 5}), ("pause", {}),
                             ("resume", {})]:
            assert http("POST", f"{base}/api/jobs/a/{action}", body)[0] == 401
            status, answer = http("POST", f"{base}/api/jobs/a/{action}", body, token="wrong")
            assert status == 403 and "not this monitor's token" in answer["error"]
        assert http("POST", f"{base}/api/workers/host-1/77/cuda:0/drain")[0] == 401
    assert snapshot(queue) == before
    assert queue.heartbeat("host-1/77/cuda:0", {}) is False
    with running_monitor(url) as base:   # started without a token: actions are off
        status, answer = http("POST", f"{base}/api/jobs/a/requeue", {}, token="anything")
        assert status == 403 and "without --token" in answer["error"]
    assert snapshot(queue)[0][1] == before[0][1]


def test_bad_requests_are_refused_clearly(farm: tuple[str, TaskQueue]) -> None:
    url, queue = farm
    before = snapshot(queue)
    with running_monitor(url, "--token", TOKEN) as base:
        cases = [
            ("GET", "/api/jobs/nope", None, 404, "no job 'nope'"),
            ("GET", "/api/jobs/nope/tasks", None, 404, "no job 'nope'"),
            ("GET", "/api/jobs/a/tasks/99999/log", None, 404, "job a has no task 99999"),
            ("GET", "/api/jobs/a/tasks/1x/log", None, 400, "'1x' is not a task id"),
            # ids are ASCII digits below 2**63: int() reads full-width '１', and 2**63 overflowed SQLite (a 500)
            ("GET", "/api/jobs/a/tasks/%EF%BC%91/log", None, 400, "'１' is not a task id (ASCII digits"),
            ("GET", f"/api/jobs/a/tasks/{2**63}/log", None, 400, f"'{2**63}' is not a task id"),
            ("GET", "/api/jobs?limit=%EF%BC%91", None, 400, "limit = '１': expected a whole number"),
            ("GET", "/api/jobs/a/thumbnails/%EF%BC%91", None, 400, "frame '１' is not a frame number"),
            ("GET", "/api/jobs?state=broken", None, 400, "state = 'broken': expected one of"),
            ("GET", "/api/jobs?limit=-1", None, 400, "limit = '-1'"),
            ("GET", "/api/jobs/" + urllib.parse.quote("../../etc/passwd", safe=""), None, 404, "no API path"),
            ("GET", "/api/jobs/a%00b", None, 400, "is not a job id"),
            ("POST", "/api/jobs/%2E%2E/requeue", {}, 400, "is not a job id"),
            ("POST", "/api/jobs/nope/requeue", {}, 404, "no job 'nope'"),
            ("POST", "/api/jobs/a/requeue", "{not json", 400, "not JSON"),
            ("POST", "/api/jobs/a/requeue", "[1, 2]", 400, "must be a JSON object"),
            ("POST", "/api/jobs/a/requeue", {"failed_only": "yes"}, 400, 'failed_only = "yes": expected true or false'),
            ("POST", "/api/jobs/a/requeue", {"all": True}, 400, "unknown field(s) 'all'"),
            ("POST", "/api/jobs/a/priority", {}, 400, "priority is missing"),
            ("POST", "/api/jobs/a/priority", {"priority": 1000}, 400, "priority = 1000: expected a whole number from"),
            ("POST", "/api/jobs/a/priority", {"priority": 1.5}, 400, "priority = 1.5"),
            ("POST", "/api/jobs/c/pause", {}, 409, "job c is done; only an active job can be made paused"),
            ("POST", "/api/jobs/a/resume", {}, 409, "job a is active; only an paused job"),
            ("POST", "/api/workers/nobody/drain", {}, 404, "no worker 'nobody'"),
            ("GET", "/api/jobs/a/requeue", None, 405, "no API path GET"),
        ]
        for method, path, body, want_status, want_text in cases:
            status, answer = http(method, base + path, body, token=TOKEN)
            assert (status, want_text in answer.get("error", "")) == (want_status, True), (path, body, answer)
    assert snapshot(queue) == before


def test_actions_change_the_queue(farm: tuple[str, TaskQueue]) -> None:
    url, queue = farm
    with running_monitor(url, token=TOKEN) as base:
        assert http("POST", base + "/api/jobs/a/requeue", "", token=TOKEN) == (200, {"job_id": "a", "requeued": 1})
        assert [t.state for t in queue.tasks("a")] == ["done", "pending", "leased", "pending"]
        assert http("POST", base + "/api/jobs/b/priority", {"priority": 7}, token=TOKEN)[0] == 200
        assert queue.lease("w3", 60).job_id == "b"                                  # b now goes first
        assert http("POST", base + "/api/jobs/b/pause", {}, token=TOKEN) == (200, {"job_id": "b", "state": "paused"})
        assert queue.lease("w3", 60).job_id == "a"                                  # a paused job hands out nothing
        assert http("GET", base + "/api/jobs?state=paused")[1]["jobs"][0]["job_id"] == "b"
        assert http("POST", base + "/api/jobs/b/resume", {}, token=TOKEN)[0] == 200
        assert http("POST", base + "/api/jobs/a/cancel", {}, token=TOKEN)[1]["cancelled"] == 3   # 2 leased, 1 pending
        assert queue.status("a")[0].state == "cancelled"
        status, answer = http("POST", base + "/api/workers/host-1/77/cuda:0/drain", {}, token=TOKEN)
        assert (status, answer) == (200, {"worker": "host-1/77/cuda:0", "draining": True})
        assert queue.heartbeat("host-1/77/cuda:0", {}) is True                      # the worker is told


def test_reads_need_the_token_off_loopback(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    open_queue(url).submit(spec("a"))
    port = free_port()
    refused = render("monitor", "--queue", url, "--bind", f"0.0.0.0:{port}")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: --bind = '0.0.0.0:{port}': is not a loopback address; a monitor reachable from other hosts "
        "needs --token or $FRAMEFARM_MONITOR_TOKEN"]
    with running_monitor(url, "--token", TOKEN, host="0.0.0.0") as base:
        assert http("GET", base + "/api/jobs")[0] == 401
        assert http("GET", base + "/api/jobs", token="nope")[0] == 403
        assert http("GET", base + "/api/jobs", token=TOKEN)[1]["total"] == 1


def test_bad_bind_and_a_port_in_use_are_one_line(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    open_queue(url).submit(spec("a"))
    bad = render("monitor", "--queue", url, "--bind", "localhost")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--bind = 'localhost': expected HOST:PORT" in bad.stderr
    wide = render("monitor", "--queue", url, "--bind", "127.0.0.1:８４７０")   # full-width digits: int() reads them
    assert wide.returncode == 2 and wide.stderr.count("\n") == 1
    assert "--bind = '127.0.0.1:８４７０': expected HOST:PORT" in wide.stderr and "ASCII digits" in wide.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = render("monitor", "--queue", url, "--bind", f"127.0.0.1:{port}")
    assert busy.returncode == 2 and busy.stderr.count("\n") == 1 and "cannot listen there" in busy.stderr
    missing = render("monitor", "--queue", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 2 and "no queue database at this path" in missing.stderr
    assert not (tmp_path / "none.db").exists()



def raw_post(base: str, path: str, head: str, chunks: list[bytes]) -> tuple[int, dict]:
    """POST over a bare socket, headers as given, then the chunks (possibly fewer bytes than
    announced: the monitor must answer without waiting for the rest); status and JSON answer."""
    import json

    address = urllib.parse.urlsplit(base)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nConnection: close\r\n{head}\r\n".encode())
        for chunk in chunks:
            conn.sendall(chunk)
        reply = b""
        while part := conn.recv(65536):
            reply += part
    header, _, body = reply.partition(b"\r\n\r\n")
    return int(header.split()[1]), json.loads(body)


def test_hostile_bodies_are_refused_with_400_or_413(tmp_path) -> None:
    """Bodies that made a 500 (an integer past Python's 4300-digit limit, 100000 nested
    '['), and bodies too large to be an action's, are refused in one line naming the body."""
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    queue = open_queue(url)
    queue.submit(spec("a"))
    before = snapshot(queue)
    with running_monitor(url, token=TOKEN) as base:
        status, answer = http("POST", base + "/api/jobs/a/priority", '{"priority": ' + "1" * 5000 + "}", token=TOKEN)
        assert (status, "the request body holds a number too long" in answer["error"]) == (400, True), answer
        status, answer = http("POST", base + "/api/jobs/a/requeue", "[" * 100_000, token=TOKEN)
        assert (status, "the request body is nested too deeply" in answer["error"]) == (400, True), answer
        # declared too large: refused before a byte of it is read (none is sent)
        status, answer = raw_post(base, "/api/jobs/a/priority", f"Content-Length: {2 * 1024 * 1024}\r\n", [])
        assert (status, "the request body is 2097152 bytes; at most 1048576" in answer["error"]) == (413, True)
        chunk = b" " * 65536   # chunked: no Content-Length to refuse it by, so the stream is counted
        chunked = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 17   # just past 1 MiB; the rest never comes
        status, answer = raw_post(base, "/api/jobs/a/priority", "Transfer-Encoding: chunked\r\n", chunked)
        assert (status, "the request body is over 1048576 bytes" in answer["error"]) == (413, True), answer
        assert http("POST", base + "/api/jobs/a/priority", {"priority": 5}, token=TOKEN)[0] == 200   # still serving
    assert snapshot(queue)[0][0]["priority"] == 5 and snapshot(queue)[0][1] == before[0][1]
    queue.close()


def test_a_token_no_header_can_carry_is_refused_at_start(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token with whitespace or non-ASCII characters was accepted, and then no request
    could ever match it (headers drop outer whitespace and arrive as Latin-1)."""
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    open_queue(url).submit(spec("a"))
    for token in ("s3cret token", " padded", "t\u00f6k\u00e9n-secret", "tab\there"):
        monkeypatch.setenv("FRAMEFARM_MONITOR_TOKEN", token)
        from_env = render("monitor", "--queue", url, "--bind", f"127.0.0.1:{free_port()}", timeout=60)
        monkeypatch.delenv("FRAMEFARM_MONITOR_TOKEN")
        from_option = render("monitor", "--queue", url, "--bind", f"127.0.0.1:{free_port()}", "--token", token,
                             timeout=60)   # without the check, the monitor starts and serves
        for refused in (from_env, from_option):
            assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
            assert refused.stderr.startswith("error: --token (or $FRAMEFARM_MONITOR_TOKEN) = '(not shown)': "
                                             "expected printable ASCII without spaces"), refused.stderr
            assert token.strip() not in refused.stderr
