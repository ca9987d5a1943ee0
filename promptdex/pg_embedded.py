"""Embedded PostgreSQL: a private server under the data dir, shared by every promptdex process.

The binaries come from the `pgserver` package. One file lock serialises start, stop and the list
of processes using the server; the last process to leave stops it, and a small watchdog process
stops it when every user died without leaving (`kill -9`). A stale `postmaster.pid`, socket lock
or leftover backend from a killed server is cleaned up before the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from promptdex.errors import ConfigError, DatabaseError

logger = logging.getLogger(__name__)

DATABASE = "promptdex"
SUPERUSER = "postgres"
SYSTEM_USER = "pgserver"  # the unprivileged account PostgreSQL runs as when we are root
PORT = 5432  # only names the unix socket; the server listens on no TCP address


def _bin_dir() -> Path:
    """The PostgreSQL binaries shipped by `pgserver` (found without importing it: its import has side effects)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError("the embedded PostgreSQL needs the `pgserver` package: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass(frozen=True)
class _User:
    pid: int
    started: float

    def alive(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 0.5
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False


def _me() -> _User:
    return _User(os.getpid(), psutil.Process().create_time())


class EmbeddedPostgres:
    """A private PostgreSQL server whose files live in `root` (normally DATA_DIR/postgres)."""

    def __init__(self, root: Path, *, start_timeout: float = 60.0) -> None:
        self.root = root
        self.pgdata = root / "pgdata"
        self.start_timeout = start_timeout
        self._lock_path = root / "server.lock"
        self._users_path = root / "users.json"
        self._registered = False

    # -- public -------------------------------------------------------------------------------

    def acquire(self) -> str:
        """Start the server or join the running one; returns the connection URL for DATABASE."""
        self._prepare_root()
        with self._locked():
            if os.geteuid() == 0:
                self._prepare_for_system_user()
            self._init_if_needed()
            started = False
            if not self._running():
                self._clean_stale()
                self._start()
                started = True
            users = [u for u in self._read_users() if u.alive()]
            me = _me()
            if me not in users:
                users.append(me)
            self._write_users(users)
            if not self._registered:
                atexit.register(self.release)
                self._registered = True
            self._ensure_database()
        if started:
            self._spawn_watchdog()
        return self.url(DATABASE)

    def release(self) -> None:
        """Leave; the last live user stops the server."""
        if not self._registered:
            return
        self._registered = False
        with contextlib.suppress(OSError), self._locked():
            me = _me()
            users = [u for u in self._read_users() if u.alive() and u != me]
            self._write_users(users)
            if not users and self._running():
                self._stop()

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={PORT}"

    @property
    def log_path(self) -> Path:
        return self.pgdata / "server.log"

    @property
    def socket_dir(self) -> Path:
        candidate = self.root / "run"
        if len(str(candidate / f".s.PGSQL.{PORT}")) < 100:
            return candidate
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"promptdex-pg-{digest}"

    def server_pid(self) -> int | None:
        """The postmaster's pid when it is running, else None."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        if len(lines) < 8 or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        if not self._is_our_postgres(pid) or lines[7].strip() not in ("ready", "starting"):
            return None
        return pid

    def ensure_running(self) -> bool:
        """Start the server again if it died (kill -9, a crash) while we use it; True when it had to be started."""
        with self._locked():
            if self._running():
                return False
            logger.warning("the embedded PostgreSQL in %s is not running: starting it again", self.pgdata)
            self._clean_stale()
            self._start()
            users = [u for u in self._read_users() if u.alive()]
            if _me() not in users:
                users.append(_me())
            self._write_users(users)
        self._spawn_watchdog()
        return True

    def supervise(self, *, interval: float = 1.0) -> threading.Event:
        """Keep the server up from a daemon thread (a serving API); set the returned event to stop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    if self.ensure_running():
                        logger.warning("the embedded PostgreSQL is running again")
                except (DatabaseError, OSError, subprocess.SubprocessError) as exc:
                    logger.error("the embedded PostgreSQL could not be restarted (will retry): %s", exc)

        threading.Thread(target=loop, name="pg-supervisor", daemon=True).start()
        return stop

    def watch(self, *, interval: float = 1.0) -> None:
        """Watchdog loop: stop the server once no registered process is alive; return when stopped."""
        while True:
            time.sleep(interval)
            with self._locked():
                if not self._running():
                    return
                users = [u for u in self._read_users() if u.alive()]
                self._write_users(users)
                if not users:
                    logger.info("embedded PostgreSQL has no users left: stopping it")
                    self._stop()
                    return

    # -- internals ------------------------------------------------------------------------------

    def _prepare_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"PROMPTDEX_DATA_DIR: cannot write the embedded database folder {self.root}: {exc.strerror}"
            ) from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_users(self) -> list[_User]:
        try:
            data = json.loads(self._users_path.read_text())
            return [_User(int(d["pid"]), float(d["started"])) for d in data]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return []

    def _write_users(self, users: list[_User]) -> None:
        tmp = self._users_path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"pid": u.pid, "started": u.started} for u in users]))
        os.replace(tmp, self._users_path)

    def _as_system_user(self) -> dict[str, object]:
        return {"user": SYSTEM_USER} if os.geteuid() == 0 else {}

    def _run(self, exe: str, args: list[str], *, timeout: float | None = None) -> None:
        cmd = [str(_bin_dir() / exe), *args]
        log = self.root / "commands.log"
        with open(log, "ab") as out:
            result = subprocess.run(
                cmd, stdout=out, stderr=out, timeout=timeout, check=False, **self._as_system_user()  # type: ignore[call-overload]
            )
        if result.returncode != 0:
            tail = self._log_tail(log)
            raise DatabaseError(f"embedded PostgreSQL: `{exe} {' '.join(args[:1])}` failed: {tail}")

    @staticmethod
    def _log_tail(path: Path) -> str:
        try:
            lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"

    def _init_if_needed(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        logger.info("initialising the embedded PostgreSQL in %s", self.pgdata)
        self._run(
            "initdb",
            ["-D", str(self.pgdata), "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", SUPERUSER],
            timeout=120,
        )

    def _prepare_for_system_user(self) -> None:
        """As root: make the unprivileged account exist and able to reach the binaries and our folder."""
        import pwd

        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", SYSTEM_USER], check=True)
        for folder in [self.root, _bin_dir()]:
            for parent in [folder, *folder.parents]:
                mode = parent.stat().st_mode
                if mode & 0o011 != 0o011:
                    parent.chmod(mode | 0o011)
        lib = _bin_dir().parent
        marker = lib / ".promptdex-permissions-ok"
        if marker.exists():
            return
        for path in lib.rglob("*"):
            mode = path.stat().st_mode
            want = mode | 0o044 | (0o011 if path.is_dir() or mode & 0o100 else 0)
            if want != mode:
                path.chmod(want)
        marker.touch()

    def _is_our_postgres(self, pid: int) -> bool:
        try:
            proc = psutil.Process(pid)
            return proc.name().startswith("postgres") and Path(proc.cwd()) == self.pgdata.resolve()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            return False

    def _running(self) -> bool:
        return self.server_pid() is not None

    def _leftover_processes(self) -> list[psutil.Process]:
        found = []
        target = self.pgdata.resolve()
        for proc in psutil.process_iter(["name"]):
            try:
                if (proc.info["name"] or "").startswith("postgres") and Path(proc.cwd()) == target:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
        return found

    def _clean_stale(self) -> None:
        """After a crash: end orphaned backends, remove a stale pid file and socket lock."""
        leftovers = self._leftover_processes()
        for proc in leftovers:
            logger.warning("ending leftover PostgreSQL process %s from a crashed server", proc.pid)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=5)
        stale = [self.pgdata / "postmaster.pid", self.socket_dir / f".s.PGSQL.{PORT}.lock",
                 self.socket_dir / f".s.PGSQL.{PORT}"]
        for path in stale:
            if path.exists():
                logger.warning("removing stale %s", path)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _start(self) -> None:
        sock = self.socket_dir
        sock.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            sock.chmod(0o777)
        logger.info("starting the embedded PostgreSQL (%s)", self.pgdata)
        self._run(
            "pg_ctl",
            ["-D", str(self.pgdata), "-w", "-t", str(int(self.start_timeout)), "-l", str(self.log_path),
             "-o", f"-h '' -k {sock} -p {PORT} -c max_connections=200", "start"],
            timeout=self.start_timeout + 10,
        )
        if not self._running():
            raise DatabaseError(
                f"embedded PostgreSQL did not start; see {self.log_path}: " + self._log_tail(self.log_path)
            )

    def _stop(self) -> None:
        logger.info("stopping the embedded PostgreSQL")
        try:
            self._run("pg_ctl", ["-D", str(self.pgdata), "-w", "-m", "fast", "stop"], timeout=60)
        except (DatabaseError, subprocess.TimeoutExpired):
            pid = self.server_pid()
            if pid is not None:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def _spawn_watchdog(self) -> None:
        subprocess.Popen(
            [sys.executable, "-m", "promptdex.pg_embedded", "watch", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )


def main(argv: list[str]) -> int:
    """`python -m promptdex.pg_embedded watch ROOT`: the watchdog process."""
    if len(argv) != 2 or argv[0] != "watch":
        return 2
    EmbeddedPostgres(Path(argv[1])).watch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
