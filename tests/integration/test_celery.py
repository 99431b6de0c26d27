"""Celery for real: worker and beat processes, a real broker, the backup found in the catalog.

Workers are ``python -m celery -A strongroom worker`` subprocesses configured only through the
environment (the standalone CLI's configuration plus ``CELERY_BROKER_URL``). Every wait is
bounded and every process is killed (its whole process group) in teardown.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery
from kombu import Connection

import strongroom
from strongroom import schedule
from strongroom.sandbox.demo_data import DemoDatabase
from strongroom.sandbox.redis import RedisServer

pytestmark = pytest.mark.integration

SRC = str(Path(strongroom.__file__).resolve().parent.parent)
EXAMPLE = Path(__file__).resolve().parents[2] / "example"
AMQP_URL = os.environ.get("STRONGROOM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
READY_TIMEOUT = 60.0


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Proc:
    """A celery subprocess in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, text: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            f"{self.name}: {text!r} not seen within {timeout:g} s "
            f"(exit code {self.popen.poll()}); log:\n{self.output()[-4000:]}"
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None or sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL for the whole group."""
        self.kill(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        self.kill(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


@dataclass
class Celeryd:
    """Starts worker/beat processes with one environment and kills them all at the end."""

    env: dict[str, str]
    tmp: Path
    app: str = "strongroom"
    cwd: Path | None = None
    procs: list[Proc] = field(default_factory=list)

    def _start(self, name: str, argv: list[str], extra_env: dict[str, str] | None) -> Proc:
        # TMPDIR: what a SIGKILLed process cannot clean up (multiprocessing's pymp-*) stays here
        env = {**self.env, "TMPDIR": str(self.tmp), **(extra_env or {})}
        log = self.tmp / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", self.app, *argv],
            env=env,
            cwd=self.cwd or self.tmp,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def worker(
        self,
        name: str,
        *,
        queue: str | None = None,
        pool: str = "prefork",
        concurrency: int = 1,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Proc:
        env = {**self.env, **(extra_env or {})}
        argv = [
            "worker",
            "-Q",
            queue or env.get("BACKUP_QUEUE", "backups"),
            f"--pool={pool}",
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        proc = self._start(name, argv, extra_env)
        if wait:
            proc.wait_for(" ready.")
        return proc

    def beat(self, name: str, schedule_file: Path, extra_env: dict[str, str] | None = None) -> Proc:
        argv = ["beat", "-s", str(schedule_file), "--loglevel=DEBUG", "--max-interval=1"]
        proc = self._start(name, argv, extra_env)
        proc.wait_for("beat: Starting...")
        return proc

    def ping(self, client: Celery, timeout: float = 60.0) -> dict[str, Any]:
        """A ``ping`` through the broker, answered by whichever worker consumes the queue."""
        answer: dict[str, Any] = client.tasks[schedule.PING_TASK].delay("hello").get(timeout)
        return answer

    def close(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def celeryd(tmp_path: Path) -> Iterator[Callable[..., Celeryd]]:
    """``celeryd(env, app="strongroom", cwd=None)``: a process starter; kills all at the end."""
    made: list[Celeryd] = []

    def make(env: dict[str, str], app: str = "strongroom", cwd: Path | None = None) -> Celeryd:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BACKUP_", "STRONGROOM_", "CELERY_", "R2_", "B2_", "PG"))
            and k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
        }
        extra = [str(cwd)] if cwd else []
        path = os.pathsep.join(p for p in (SRC, *extra, base.get("PYTHONPATH", "")) if p)
        runner = Celeryd({**base, "PYTHONPATH": path, **env}, tmp_path, app, cwd)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


def client_app(env: dict[str, str]) -> Celery:
    """A publishing app configured like the workers (same settings, no process environment)."""
    from strongroom.schedule import celery_settings, configure_app, task_settings

    ts = task_settings(env, env={})
    app = Celery(f"client-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.update(celery_settings(ts))
    app.conf.update(broker_url=env["CELERY_BROKER_URL"])
    if env.get("CELERY_RESULT_BACKEND"):
        app.conf.update(result_backend=env["CELERY_RESULT_BACKEND"])
    configure_app(app, env, env={})
    import strongroom.tasks  # noqa: F401  (registers the shared tasks with every app)

    return app


# -- priority on RabbitMQ ----------------------------------------------------------------------


def _require_rabbitmq() -> None:
    try:
        with Connection(AMQP_URL, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
    except Exception as exc:
        pytest.fail(
            f"no RabbitMQ answers at {AMQP_URL} ({exc}). Start one: "
            "`apt-get install rabbitmq-server && service rabbitmq-server start` or "
            "`docker run -d -p 5672:5672 rabbitmq:3`, or point STRONGROOM_TEST_AMQP_URL at one."
        )


def _publish_pings(app: Celery, plan: list[tuple[str, int]]) -> list[Any]:
    ping = app.tasks[schedule.PING_TASK]
    return [ping.apply_async((tag,), priority=priority) for tag, priority in plan]


def _run_order(results: list[Any], timeout: float = 60.0) -> list[str]:
    answers = [r.get(timeout=timeout) for r in results]
    return [a["tag"] for a in sorted(answers, key=lambda a: a["time_ns"])]


PLAN = [("low-1", 1), ("low-2", 1), ("mid", 5), ("low-3", 1), ("high", 10)]
EXPECTED_ORDER = ["high", "mid", "low-1", "low-2", "low-3"]


def test_priority_on_rabbitmq_serves_the_seeds_10_first(
    celeryd: Callable[..., Celeryd],
) -> None:
    _require_rabbitmq()
    queue = f"strongroom-test-backups-{uuid.uuid4().hex[:10]}"
    env = {"CELERY_BROKER_URL": AMQP_URL, "CELERY_RESULT_BACKEND": "rpc://", "BACKUP_QUEUE": queue}
    app = client_app(env)
    try:
        results = _publish_pings(app, PLAN)  # no worker yet: all five wait in the queue
        with app.connection_for_write() as conn:
            declared = conn.default_channel.queue_declare(queue, passive=True)
            assert declared.message_count == len(PLAN)
            # Redeclaring without x-max-priority is refused: the queue really is a priority one.
            with pytest.raises(Exception, match="x-max-priority"):
                conn.channel().queue_declare(queue, durable=True, auto_delete=False)
        runner = celeryd(env)
        runner.worker("rabbit")
        assert _run_order(results) == EXPECTED_ORDER
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


# -- Redis -------------------------------------------------------------------------------------


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A logical database of the session's Redis for this test alone (flushed first)."""
    import redis

    url = redis_server.url_for(next(_DBS) % 15 + 1)
    redis.Redis.from_url(url).flushdb()
    return url


_DBS = itertools.count()


def test_priority_on_redis_serves_the_seeds_10_first(
    celeryd: Callable[..., Celeryd], redis_url: str
) -> None:
    import redis

    queue = f"strongroom-test-{uuid.uuid4().hex[:8]}"
    env = {
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "BACKUP_QUEUE": queue,
    }
    app = client_app(env)
    results = _publish_pings(app, PLAN)
    # The seed's 10 lands in Redis' first step (the bare list), 1 in the last (":9").
    client = redis.Redis.from_url(redis_url)
    assert client.llen(queue) == 1
    assert client.llen(f"{queue}:5") == 1
    assert client.llen(f"{queue}:9") == 3
    runner = celeryd(env)
    runner.worker("redis-prio")
    assert _run_order(results) == EXPECTED_ORDER


def _beat_entry(schedule_file: Path) -> Any:
    import shelve

    with shelve.open(str(schedule_file)) as store:
        return store["entries"][schedule.ENTRY_NAME]


def _age_beat_entry(schedule_file: Path, days: float) -> None:
    """Pretend the last run was ``days`` ago, as after a night the beat host was down."""
    import shelve
    from datetime import UTC, datetime, timedelta

    with shelve.open(str(schedule_file), writeback=True) as store:
        store["entries"][schedule.ENTRY_NAME].last_run_at = datetime.now(UTC) - timedelta(days=days)


def _queued_messages(redis_url: str, key: str) -> list[dict[str, Any]]:
    import json

    import redis

    return [json.loads(raw) for raw in redis.Redis.from_url(redis_url).lrange(key, 0, -1)]


def start_beat_and_catch_up(
    runner: Celeryd, schedule_file: Path, redis_url: str, queue: str = "backups"
) -> dict[str, Any]:
    """Run beat once to create its schedule, age the entry, run it again: it sends at once."""
    from datetime import UTC, datetime, timedelta

    from celery.schedules import crontab

    beat = runner.beat("beat-1", schedule_file)
    beat.wait_for("beat: Waking up", timeout=30)  # first tick done: the schedule file is written
    beat.stop()
    entry = _beat_entry(schedule_file)
    assert entry.task == schedule.BACKUP_TASK
    assert entry.schedule == crontab(hour=2, minute=0)
    assert entry.options == {"queue": "backups", "priority": 10}
    now = datetime.now(UTC)
    due_at = now + entry.schedule.remaining_estimate(now) + timedelta(seconds=1)  # rounding
    assert (due_at.hour, due_at.minute) == (2, 0)
    assert timedelta(0) < due_at - now <= timedelta(days=1, seconds=1)
    assert _queued_messages(redis_url, queue) == []  # not due yet: nothing sent

    _age_beat_entry(schedule_file, days=2)
    beat = runner.beat("beat-2", schedule_file)
    beat.wait_for(f"Sending due task {schedule.ENTRY_NAME}", timeout=30)
    deadline = time.monotonic() + 10
    while not (messages := _queued_messages(redis_url, queue)) and time.monotonic() < deadline:
        time.sleep(0.1)
    beat.stop()
    assert len(messages) == 1, messages
    message = messages[0]
    assert message["headers"]["task"] == schedule.BACKUP_TASK
    assert message["properties"]["priority"] == 0  # the seed's 10, on Redis' inverted scale
    assert message["properties"]["delivery_info"]["routing_key"] == queue
    return message


def test_example_project_beat_sends_the_entry_and_its_worker_consumes_backups(
    celeryd: Callable[..., Celeryd], redis_url: str, tmp_path: Path
) -> None:
    """``celery -A config beat`` / ``celery -A config worker -Q backups`` of example/."""
    import redis

    env = {
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.sqlite3'}",
    }
    runner = celeryd(env, app="config", cwd=EXAMPLE)
    start_beat_and_catch_up(runner, tmp_path / "beat-schedule", redis_url)
    redis.Redis.from_url(redis_url).delete("backups")  # no database here to back up
    worker = runner.worker("example")
    assert "strongroom.tasks.daily_full_database_backup" in worker.output()
    assert runner.ping(client_app(env))["tag"] == "hello"


def test_beat_entry_is_0200_on_backups_priority_10_and_is_sent_through_redis(
    celeryd: Callable[..., Celeryd], redis_url: str, tmp_path: Path
) -> None:
    runner = celeryd({"CELERY_BROKER_URL": redis_url})
    message = start_beat_and_catch_up(runner, tmp_path / "beat-schedule", redis_url)
    assert message["headers"]["id"]


# -- webhook receiver --------------------------------------------------------------------------


@dataclass
class Receiver:
    """A local HTTP server that records every POSTed JSON body."""

    url: str
    posts: list[dict[str, Any]]

    def wait(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.posts) >= count, f"expected {count} webhook POSTs, got {self.posts}"
        return list(self.posts)


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posts: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length))
            body["_path"] = self.path
            body["_content_type"] = self.headers.get("Content-Type")
            posts.append(body)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield Receiver(f"http://{host!s}:{port}/hooks/T0KEN-secret-path", posts)
    server.shutdown()
    server.server_close()


# -- the backup pipeline through Celery --------------------------------------------------------


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0, every: float = 0.2) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def catalog_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite catalog shared by this test process and every worker of this module."""
    from strongroom.catalog.bootstrap import ensure_django

    path = tmp_path_factory.mktemp("celery-catalog") / "catalog.sqlite3"
    url = f"sqlite:///{path}"
    ensure_django(url)
    return url


@pytest.fixture
def backup_env(
    demo_db: DemoDatabase, catalog_url: str, redis_url: str, tmp_path: Path
) -> dict[str, str]:
    """The standalone configuration a worker gets: backup role with BYPASSRLS, key, local disk."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from strongroom.core.crypto import generate_key
    from strongroom.core.postgres import ConnInfo, apply_setup_role

    admin = demo_db.admin_url
    local = tmp_path / "local-backups"
    local.mkdir()
    password = f"pw-{uuid.uuid4().hex}"
    apply_setup_role(ConnInfo.parse(admin), "strongroom_backup", password)
    params = {**conninfo_to_dict(admin), "user": "strongroom_backup", "password": password}
    return {
        "DATABASE_URL": make_conninfo(**{k: str(v) for k, v in params.items()}),
        "BACKUP_ENCRYPTION_KEY": generate_key(),
        "BACKUP_LOCAL_PATH": str(local),
        "STRONGROOM_LOCATIONS": "local",
        "STRONGROOM_CATALOG_URL": catalog_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "BACKUP_PG_DUMP_TIMEOUT": "120",
    }


def _store() -> Any:
    from strongroom.catalog import store

    return store


def backup_status(backup_id: str) -> str:
    return str(_store().get_backup(backup_id).status)


def runs_of_job(job_id: str) -> list[Any]:
    from strongroom.models import Backup

    return list(Backup.objects.filter(backup_job_id=job_id).order_by("created_at"))


def _trigger(app: Celery, **kwargs: Any) -> Any:
    return app.tasks[schedule.BACKUP_TASK].apply_async(kwargs=kwargs)


def _objects(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "manifest" not in p.name)


def test_backup_through_the_broker_is_completed_then_verified_with_its_job_id(
    backup_env: dict[str, str], celeryd: Callable[..., Celeryd]
) -> None:
    runner = celeryd(backup_env)
    runner.worker("worker-a")
    app = client_app(backup_env)
    result = _trigger(app)
    backup_id = result.get(timeout=120)
    backup = _store().get_backup(backup_id)
    assert backup.backup_job_id == result.id
    wait_for("verification", lambda: backup_status(backup_id) == "VERIFIED", timeout=120)
    assert len(_objects(Path(backup_env["BACKUP_LOCAL_PATH"]))) == 1


def test_beat_fires_the_entry_through_redis_and_a_worker_backs_up(
    backup_env: dict[str, str], celeryd: Callable[..., Celeryd], tmp_path: Path
) -> None:
    runner = celeryd(backup_env)
    message = start_beat_and_catch_up(
        runner, tmp_path / "beat-schedule", backup_env["CELERY_BROKER_URL"]
    )
    job_id = message["headers"]["id"]
    runner.worker("worker-beat")
    runs = wait_for("the beat-sent backup", lambda: runs_of_job(job_id), timeout=120)
    wait_for("verification", lambda: backup_status(runs[0].id) == "VERIFIED", timeout=120)
    assert [r.backup_job_id for r in runs_of_job(job_id)] == [job_id]


class TableLock:
    """Holds ACCESS EXCLUSIVE on a demo table: a backup that starts now waits inside pg_dump.

    This is how a test holds a backup *mid-run* for as long as it likes, with no timing luck:
    the run has its catalog record, holds the advisory lock and has pg_dump running.
    """

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(admin_url, autocommit=False)
        row = self.conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
            "ORDER BY schemaname, tablename LIMIT 1"
        ).fetchone()
        assert row, "the demo database has no tables"
        self.table = str(row[0])
        self.conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")

    def dumps_waiting(self) -> int:
        import psycopg

        with psycopg.connect(self.conn.info.dsn, password=self.conn.info.password or None) as c:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'"
            ).fetchone()
        return int(row[0]) if row else 0

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


@pytest.fixture
def table_lock(demo_db: DemoDatabase) -> Iterator[Callable[[], TableLock]]:
    locks: list[TableLock] = []

    def take() -> TableLock:
        lock = TableLock(demo_db.admin_url)
        locks.append(lock)
        return lock

    yield take
    for lock in locks:
        lock.release()


def test_two_concurrent_triggers_on_two_workers_make_one_dump_and_one_skip(
    backup_env: dict[str, str],
    celeryd: Callable[..., Celeryd],
    table_lock: Callable[[], TableLock],
) -> None:
    runner = celeryd(backup_env)
    runner.worker("machine-a")
    runner.worker("machine-b")
    app = client_app(backup_env)
    lock = table_lock()
    first, second = _trigger(app, verify=False), _trigger(app, verify=False)
    # One run takes the advisory lock and waits in pg_dump; the other is SKIPPED at once.
    skipped = wait_for(
        "one SKIPPED run", lambda: [r for r in (first, second) if r.ready()], timeout=60
    )
    assert len(skipped) == 1
    skipped_id = skipped[0].get(timeout=10)
    assert backup_status(skipped_id) == "SKIPPED"
    assert wait_for("pg_dump waiting on the table lock", lock.dumps_waiting, timeout=30) == 1
    lock.release()
    running = second if skipped[0] is first else first
    done_id = running.get(timeout=120)
    assert backup_status(done_id) == "COMPLETED"
    assert len(_objects(Path(backup_env["BACKUP_LOCAL_PATH"]))) == 1  # one dump
    assert {_store().get_backup(i).backup_job_id for i in (skipped_id, done_id)} == {
        first.id,
        second.id,
    }
    hosts = {"machine-a", "machine-b"}
    logs = {p.name: p.output() for p in runner.procs}
    assert all(any(r.id in logs[h] for r in (first, second)) for h in hosts)  # one each


def _pool_children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _running_run(job_id: str) -> Any:
    runs = runs_of_job(job_id)
    return runs[-1] if runs and runs[-1].status in ("IN_PROGRESS", "RUNNING") else None


def test_sigkilled_worker_leaves_a_run_that_check_marks_failed_and_the_next_backup_succeeds(
    backup_env: dict[str, str],
    celeryd: Callable[..., Celeryd],
    table_lock: Callable[[], TableLock],
    tmp_path: Path,
) -> None:
    runner = celeryd(backup_env)
    worker = runner.worker("doomed")
    app = client_app(backup_env)
    lock = table_lock()
    doomed = _trigger(app)
    run = wait_for("the run to start", lambda: _running_run(doomed.id), timeout=60)
    wait_for("pg_dump mid-backup", lock.dumps_waiting, timeout=30)
    worker.kill(signal.SIGKILL)  # the whole worker: main process, pool process, pg_dump
    worker.popen.wait(10)
    lock.release()
    assert backup_status(run.id) in ("IN_PROGRESS", "RUNNING")  # nobody could record it

    env = {**os.environ, **runner.env}
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "from strongroom.interfaces.cli import main; raise SystemExit(main(['check']))",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    dead = _store().get_backup(run.id)
    assert dead.status == "FAILED", check.stdout + check.stderr
    assert "died" in dead.error and "strongroom check" in dead.error
    assert check.returncode != 0  # and no good backup yet: check says so

    runner.worker("survivor")
    result = _trigger(app)
    backup_id = result.get(timeout=120)
    wait_for("verification", lambda: backup_status(backup_id) == "VERIFIED", timeout=120)


def test_sigkilled_pool_process_is_redelivered_and_the_next_run_records_the_dead_one(
    backup_env: dict[str, str],
    webhook: Receiver,
    celeryd: Callable[..., Celeryd],
    table_lock: Callable[[], TableLock],
) -> None:
    env = {
        **backup_env,
        "BACKUP_TASK_RETRY_BACKOFF": "1",  # the retry after a lost worker waits this long
        "BACKUP_NOTIFY_WEBHOOK_URL": webhook.url,
    }
    runner = celeryd(env)
    worker = runner.worker("oom")
    app = client_app(backup_env)
    lock = table_lock()
    job = _trigger(app)
    run = wait_for("the run to start", lambda: _running_run(job.id), timeout=60)
    wait_for("pg_dump mid-backup", lock.dumps_waiting, timeout=30)
    children = _pool_children(worker.popen.pid)
    assert len(children) == 1, children
    os.kill(children[0], signal.SIGKILL)  # what the OOM killer does
    # The message goes back to the queue (acks_late + reject_on_worker_lost) and runs again.
    wait_for("the redelivered run", lambda: len(runs_of_job(job.id)) == 2, timeout=60)
    lock.release()
    backup_id = job.get(timeout=120)
    assert backup_id != run.id
    dead = _store().get_backup(run.id)
    assert dead.status == "FAILED"
    assert "died" in dead.error and "next run" in dead.error
    wait_for("verification", lambda: backup_status(backup_id) == "VERIFIED", timeout=120)
    (post,) = webhook.wait(1)  # the operators hear about the dead run, by its id
    assert post["backup_id"] == run.id and post["status"] == "FAILED"
    assert post["reason"] == dead.error
    assert post["note"] == "recorded FAILED by the next run of this database"
    assert "Retry in 1" in worker.output() and "WorkerLostError" in worker.output()


# -- being told --------------------------------------------------------------------------------


def _assert_no_secret(document: Any, env: dict[str, str], webhook_url: str) -> None:
    import json

    from psycopg.conninfo import conninfo_to_dict

    def public(doc: Any) -> Any:  # what the receiver added about the request is not payload
        if isinstance(doc, dict):
            return {k: public(v) for k, v in doc.items() if not str(k).startswith("_")}
        return [public(d) for d in doc] if isinstance(doc, list) else doc

    text = json.dumps(public(document))
    password = str(conninfo_to_dict(env["DATABASE_URL"]).get("password"))
    for secret in (env["BACKUP_ENCRYPTION_KEY"], password, "T0KEN-secret-path", webhook_url):
        assert secret not in text


def test_failed_backup_mails_the_admins_and_posts_the_webhook(
    backup_env: dict[str, str], webhook: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, with Django's locmem mail backend: a non-transient failure, told once."""
    from django.core import mail
    from django.test import override_settings

    from strongroom.tasks import daily_full_database_backup

    env = {
        **backup_env,
        "STRONGROOM_LOCATIONS": "local,r2",
        "STRONGROOM_REQUIRED_LOCATIONS": "local,r2",  # r2 has no settings: a ConfigError
        "BACKUP_NOTIFY_WEBHOOK_URL": webhook.url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    mail.outbox = []
    with override_settings(
        ADMINS=[("Ops", "ops@example.com")],
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    ):
        outcome = daily_full_database_backup.apply()
    assert outcome.failed()
    failed = _store().list_backups(None, 5)[0]
    assert failed.status == "FAILED"
    assert "r2 is not configured" in failed.error

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["ops@example.com"]
    assert failed.id in message.subject and "FAILED" in message.subject
    assert "r2 is not configured" in message.body and failed.id in message.body

    (post,) = webhook.wait(1)
    assert post["_content_type"] == "application/json"
    assert post["backup_id"] == failed.id
    assert post["status"] == "FAILED"
    assert "r2 is not configured" in post["reason"]
    assert post["note"].startswith("not retried")
    assert post["database"] and post["host"] and post["database_host"]
    _assert_no_secret([post, message.subject, message.body], env, webhook.url)


def test_worker_retries_unreachable_storage_with_backoff_and_notifies_each_attempt(
    backup_env: dict[str, str],
    celeryd: Callable[..., Celeryd],
    webhook: Receiver,
    tmp_path: Path,
) -> None:
    env = {
        **backup_env,
        "BACKUP_LOCAL_PATH": str(tmp_path / "not-mounted"),  # storage unreachable: transient
        "BACKUP_NOTIFY_WEBHOOK_URL": webhook.url,
        "BACKUP_TASK_MAX_RETRIES": "2",
        "BACKUP_TASK_RETRY_BACKOFF": "0.5",
    }
    runner = celeryd(env)
    runner.worker("retrier")
    result = _trigger(client_app(env))
    with pytest.raises(Exception, match="does not exist"):
        result.get(timeout=120)
    runs = runs_of_job(result.id)
    assert [r.status for r in runs] == ["FAILED"] * 3  # first attempt + 2 retries, one job id
    posts = webhook.wait(3)
    assert [p["backup_id"] for p in posts] == [r.id for r in runs]
    assert [p["note"].split(";")[0] for p in posts[:2]] == ["transient failure"] * 2
    assert "attempt 2 of 3" in posts[0]["note"] and "attempt 3 of 3" in posts[1]["note"]
    assert posts[2]["note"] == "not retried: gave up after 3 attempt(s)"
    _assert_no_secret(posts, env, webhook.url)


def test_worker_never_retries_a_configuration_error(
    backup_env: dict[str, str], webhook: Receiver, celeryd: Callable[..., Celeryd]
) -> None:
    env = {
        **backup_env,
        "BACKUP_NOTIFY_WEBHOOK_URL": webhook.url,
        "BACKUP_TASK_RETRY_BACKOFF": "0.2",
    }
    env.pop("BACKUP_ENCRYPTION_KEY")
    runner = celeryd(env)
    worker = runner.worker("no-key")
    result = _trigger(client_app(env))
    with pytest.raises(Exception, match="BACKUP_ENCRYPTION_KEY"):
        result.get(timeout=60)
    (post,) = webhook.wait(1)
    assert post["status"] == "FAILED" and "BACKUP_ENCRYPTION_KEY" in post["reason"]
    assert post["note"].startswith("not retried")
    time.sleep(2)  # a retry (0.2 s backoff) would have run by now
    assert len(webhook.posts) == 1
    assert worker.output().count(f"{result.id}] received") == 1


def test_an_unreachable_webhook_is_logged_and_never_breaks_the_backup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    from strongroom.config import load_config
    from strongroom.services.notify import notify_problem

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/T0KEN-secret-path"
    config = load_config({"STRONGROOM_LOCATIONS": "local", "BACKUP_NOTIFY_WEBHOOK_URL": url})
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="strongroom.notify"):
        notify_problem(config, "20240127T020000Z-abcdef", "PARTIAL", "r2: unreachable")
    assert time.monotonic() - started < 30
    assert f"could not notify http://127.0.0.1:{port}" in caplog.text
    assert "T0KEN" not in caplog.text


def test_called_directly_as_in_the_seeds_manual_test_it_backs_up_in_process(
    backup_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``daily_full_database_backup()`` with no broker: runs here, returns the id, no job id."""
    from strongroom.tasks import daily_full_database_backup

    for name, value in backup_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CELERY_BROKER_URL")  # nothing may be queued (no verify, no retry)
    backup_id = daily_full_database_backup()
    backup = _store().get_backup(backup_id)
    assert backup.status == "COMPLETED"
    assert backup.backup_job_id == ""
    assert backup.get_size_mb() >= 0


def test_the_weekly_drill_task_through_the_broker_drills_the_newest_backup_and_marks_it(
    backup_env: dict[str, str], celeryd: Callable[..., Celeryd], demo_db: DemoDatabase
) -> None:
    # the backup role of setup-role cannot create databases: drills go where one can
    env = {**backup_env, "BACKUP_DRILL_TARGET_URL": demo_db.admin_url}
    runner = celeryd(env)
    runner.worker("worker-drill")
    app = client_app(env)
    backup_id = _trigger(app, verify=False).get(timeout=120)
    result = app.tasks[schedule.DRILL_TASK].apply_async().get(timeout=180)
    (drill,) = result["drills"]  # no tenant backup of this database: the full one only
    assert result["ok"] is True, result
    assert drill["kind"] == "full" and drill["backup_id"] == backup_id
    assert drill["rto_seconds"] > 0 and drill["mismatches"] == []
    assert _store().get_backup(backup_id).last_drill_ok is True


def test_the_weekly_tenant_task_through_the_broker_backs_up_every_tenant_apart(
    backup_env: dict[str, str], celeryd: Callable[..., Celeryd], demo_db: DemoDatabase
) -> None:
    # a tenant export reads each table as its owner: the connecting role must be able to take it
    env = {**backup_env, "DATABASE_URL": demo_db.admin_url}
    runner = celeryd(env)
    runner.worker("worker-tenants")
    app = client_app(env)
    sent = app.tasks[schedule.TENANT_TASK].apply_async()
    result = sent.get(timeout=180)
    with psycopg.connect(demo_db.admin_url) as conn:
        tenants = sorted(str(r[0]) for r in conn.execute("SELECT id FROM tenants"))
    assert result["ok"] is True and result["failed"] == {}, result
    assert sorted(result["backups"]) == tenants and len(tenants) == 3
    ids = set()
    for tenant, backup_id in result["backups"].items():
        backup = _store().get_backup(backup_id)
        assert (backup.backup_type, backup.tenant_id) == ("TENANT_BACKUP", tenant)
        assert backup.status == "COMPLETED" and backup.backup_job_id == sent.id
        assert backup.metadata["table_rows"]["public.tenants"] == 1, backup.metadata
        ids.add(backup_id)
    assert len(ids) == len(tenants)  # one object each
