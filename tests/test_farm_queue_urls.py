"""Queue URLs name one file wherever a command runs: `sqlite:///ABSOLUTE/PATH` is that
absolute path (SQLAlchemy's `sqlite:////ABSOLUTE/PATH` too), `sqlite:RELATIVE/PATH` is
resolved against the working directory once, and every command names the absolute
path it used. Only `submit` and `worker` create a queue file; `status`, `requeue` and
`cancel` refuse one that does not exist (exit 2, one line, nothing created)."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import render

from pipeline.errors import JobError
from workers.queue import open_queue
from workers.tasks import JobSpec


def one_error_line(result) -> str:
    """The CLI's answer to bad input: exit 2, one line on stderr, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.queue import sqlite_path

    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///var/farm/farm.db") == Path("/var/farm/farm.db")    # the README's form
    assert sqlite_path("sqlite:////var/farm/farm.db") == Path("/var/farm/farm.db")   # SQLAlchemy's absolute
    assert sqlite_path("sqlite:var/farm.db") == tmp_path.resolve() / "var" / "farm.db"
    assert sqlite_path("sqlite:./farm.db") == tmp_path.resolve() / "farm.db"
    for bad in ("sqlite:", "sqlite://", "sqlite:///", "sqlite:///var/farm/", "sqlite://host/farm.db"):
        with pytest.raises(JobError) as caught:
            sqlite_path(bad)
        assert caught.value.field == "--queue" and repr(bad) in str(caught.value)


def test_status_requeue_and_cancel_refuse_a_queue_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "farm.db"
    for command in (["status"], ["status", "--json"], ["requeue", "abc"], ["cancel", "abc"]):
        line = one_error_line(render(*command, "--queue", f"sqlite://{missing}", cwd=tmp_path))
        assert f"--queue = '{missing}'" in line and "no queue database at this path" in line
    assert not (tmp_path / "elsewhere").exists(), "nothing was created"
    with pytest.raises(JobError):
        open_queue(f"sqlite://{missing}", create=False)
    assert not missing.parent.exists()


def test_the_readme_url_is_absolute_from_any_folder(write_job: Callable[..., Path], tmp_path: Path) -> None:
    """`sqlite:///var/farm.db` (three slashes) used to open ./var/farm.db, and `status`
    from another folder silently made a new, empty queue."""
    database = tmp_path / "var" / "farm.db"
    url = f"sqlite://{database}"                                  # sqlite:///tmp/.../var/farm.db
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    submitted = render("submit", str(write_job()), "--queue", url, cwd=here)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert database.is_file()
    assert list(here.iterdir()) == [], "nothing was created under the working directory"
    assert f"on sqlite://{database}" in submitted.stderr
    shown = render("status", "--queue", url, cwd=there)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == f"queue sqlite://{database}"
    assert job_id in shown.stdout
    as_json = json.loads(render("status", "--queue", url, "--json", cwd=there).stdout)
    assert as_json["queue"] == f"sqlite://{database}" and as_json["jobs"][0]["job_id"] == job_id
    cancelled = render("cancel", job_id, "--queue", f"sqlite:///{database}", cwd=there)   # four slashes: the same file
    assert cancelled.returncode == 0 and f"in sqlite://{database}" in cancelled.stdout
    assert list(there.iterdir()) == []


def test_a_relative_url_resolves_against_the_working_directory(write_job: Callable[..., Path],
                                                                tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    submitted = render("submit", str(write_job()), "--queue", "sqlite:queue/farm.db", cwd=here)
    assert submitted.returncode == 0, submitted.stderr
    assert (here / "queue" / "farm.db").is_file()
    assert f"sqlite://{(here / 'queue' / 'farm.db').resolve()}" in submitted.stderr
    line = one_error_line(render("status", "--queue", "sqlite:queue/farm.db", cwd=there))
    assert f"'{(there / 'queue' / 'farm.db').resolve()}'" in line
    assert list(there.iterdir()) == [], "status created nothing"


def test_files_that_are_not_queues_are_refused_as_bad_input(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE photos (name TEXT)")
    for path, words in ((folder, "is a folder"), (text, "cannot be opened as the queue database"),
                        (other, "not a framefarm queue")):
        for create in (True, False):
            with pytest.raises(JobError) as caught:
                open_queue(f"sqlite://{path}", create=create)
            assert words in str(caught.value) and str(path) in str(caught.value)
        line = one_error_line(render("status", "--queue", f"sqlite://{path}"))
        assert words in line
    with sqlite3.connect(other) as db:
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master")] == ["photos"], "left untouched"


def test_a_queue_file_of_the_first_schema_opens_and_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, spec TEXT NOT NULL,
                               priority INTEGER NOT NULL, max_attempts INTEGER NOT NULL, state TEXT NOT NULL);
            CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, kind TEXT NOT NULL,
                                first INTEGER NOT NULL, last INTEGER NOT NULL, state TEXT NOT NULL,
                                attempts INTEGER NOT NULL DEFAULT 0, token INTEGER NOT NULL DEFAULT 0,
                                lease_until REAL, worker TEXT, error TEXT);
            CREATE TABLE workers (name TEXT PRIMARY KEY, heartbeat REAL NOT NULL, info TEXT NOT NULL);
        """)
    queue = open_queue(f"sqlite://{path}", create=False)
    queue.submit(JobSpec(job_id="j1", name="shot", toml="seed = 1\n", base_dir="/jobs", output_root="/renders",
                         frame_start=1, frame_end=2, priority=0, chunk=2, video=False, max_attempts=3))
    task = queue.lease("w1", 30)
    assert not queue.fail(task, "w1", "boom", block_after=1)
    assert queue.status("j1")[0].blocked == [{"worker": "w1", "failures": 1}]
    queue.close()


class NotRedis:
    """A TCP service on 127.0.0.1 that is not Redis: it answers every read with `reply`."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:   # closed: the test is over
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while conn.recv(65536):
                conn.sendall(self.reply)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", b"hello\r\n",
                                   b"+OK\r\n", b":1\r\n"])
def test_a_redis_url_on_a_server_that_is_not_redis_is_one_line(reply: bytes, tmp_path: Path) -> None:
    """redis-py's InvalidResponse (or its handshake's AttributeError) was a traceback. A
    wrong port is configuration, as a refused password: exit 2, the URL's password masked."""
    pytest.importorskip("redis")
    service = NotRedis(reply)
    url = f"redis://:hunter2@127.0.0.1:{service.port}/0"
    try:
        with pytest.raises(JobError) as caught:
            open_queue(url)
        line = one_error_line(render("status", "--queue", url))
        worker = render("worker", "--queue", url, "--device", "cpu", "--output-root", str(tmp_path),
                        "--model-root", str(tmp_path))
    finally:
        service.close()
    shown = f"--queue = 'redis://***@127.0.0.1:{service.port}/0': the server there answered something that is not " \
            "the Redis protocol"
    assert shown in str(caught.value) and shown in line and "hunter2" not in line
    assert "Traceback" not in worker.stderr and worker.returncode == 2 and shown in worker.stderr, worker.stderr


def test_an_unreachable_redis_stays_exit_1(tmp_path: Path) -> None:
    """Unreachable is weather (Redis restarting, the network down), not bad input: one
    line, exit 1, as before; a worker waits for it instead of exiting."""
    pytest.importorskip("redis")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = render("status", "--queue", f"redis://:hunter2@127.0.0.1:{port}/0")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"error: the queue cannot be reached: Redis at redis://***@127.0.0.1:{port}/0" in result.stderr
