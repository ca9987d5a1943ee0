"""`promptdex serve`: run the search API and the web page (and, on loopback, print a one-time sign-in link)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from promptdex import accounts
from promptdex.console import out
from promptdex.db import open_database
from promptdex.errors import ConfigError, InvalidInput
from promptdex.settings import AnonymousAccess, Settings
from search_api.middleware import split_list

logger = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser = sub.add_parser("serve", help="serve the search API and the web page")
    parser.add_argument("--host", default=None, help="address to bind (default PROMPTDEX_API__HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default PROMPTDEX_API__PORT, 8000)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="also run N `promptdex worker` processes beside the server (restarted if they die)")
    parser.set_defaults(func=run)


def _end_with_parent() -> None:
    """In the child: SIGTERM when the server ends, however it ends (uvicorn re-raises SIGTERM after its shutdown,
    and a server killed with SIGKILL runs no cleanup). Linux prctl(PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class Children:
    """Child processes that live as long as the server (`promptdex worker`s, the folder watch): one that dies is
    started again (looked at every RESTART_SECONDS); on exit each gets SIGTERM and finishes what it has in hand
    (a worker its jobs, the watch its batch), or after 30 s is killed (a worker's jobs go back to the queue when
    their lease runs out; the watch's next scan finds what it had not imported)."""

    RESTART_SECONDS = 5.0

    def __init__(self, commands: list[tuple[str, list[str]]]) -> None:
        self.commands = commands  # (what it is, for the log; its promptdex arguments)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="child-supervisor", daemon=True)

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "promptdex", *argv], stdin=subprocess.DEVNULL,
                                preexec_fn=_end_with_parent if sys.platform == "linux" else None)

    def __enter__(self) -> Children:
        self.procs = [self._spawn(argv) for _, argv in self.commands]
        for (what, _), proc in zip(self.commands, self.procs, strict=True):
            out(f"started the {what}: pid {proc.pid}")
        if self.procs:
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.RESTART_SECONDS):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stop.is_set():
                    what, argv = self.commands[i]
                    self.procs[i] = self._spawn(argv)
                    logger.warning("%s pid %d exited with %s; started another: pid %d", what, proc.pid,
                                   proc.returncode, self.procs[i].pid)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def children(settings: Settings, workers: int) -> list[tuple[str, list[str]]]:
    """What serve runs beside itself: N generation workers, and the folder watch when PROMPTDEX_WATCH is set."""
    from indexer.watch import watch_roots

    commands = [("generation worker", ["worker"]) for _ in range(workers)]
    roots = watch_roots(settings.watch)
    bad = [r for r in roots if not os.path.isdir(os.path.expanduser(r))]
    if bad:
        raise ConfigError(f"PROMPTDEX_WATCH: {', '.join(bad)}: not a folder; give folders separated by ':'")
    if roots:
        commands.append((f"folder watch of {', '.join(roots)}", ["import", "--watch", "--no-progress", *roots]))
    return commands


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def prepare(settings: Settings, host: str, port: int) -> str | None:
    """Check the settings fit the address; on loopback make a one-time sign-in link for the local admin."""
    loopback = is_loopback(host)
    if settings.api.anonymous is AnonymousAccess.CREATE:
        if not loopback:
            raise ConfigError(f"PROMPTDEX_API__ANONYMOUS=create lets anyone who reaches {host} queue generation "
                              "work; set it to read or none to serve on a non-loopback address")
        public = [h for h in split_list(settings.api.allowed_hosts) if not is_loopback(h)]
        if public:
            raise ConfigError(f"PROMPTDEX_API__ANONYMOUS=create with PROMPTDEX_API__ALLOWED_HOSTS naming "
                              f"{', '.join(public)} (reached through a proxy?) lets anyone queue generation work; "
                              "set PROMPTDEX_API__ANONYMOUS to read or none")
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            if not loopback:
                if not accounts.has_admin(conn):
                    raise ConfigError(f"serving on {host} with no admin user: add one first with `promptdex user add "
                                      "NAME --role admin`, or serve on 127.0.0.1 (PROMPTDEX_API__HOST)")
                return None
            admin = accounts.ensure_local_admin(conn)
            token = accounts.create_login_link(conn, user_id=admin.id, minutes=settings.api.login_link_minutes)
    finally:
        db.close()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/auth/link?token={token}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from search_api.app import create_app

    host = args.host or settings.api.host
    port = args.port or settings.api.port
    if args.workers < 0:
        raise InvalidInput(f"--workers: {args.workers} is not accepted; accepted: 0 or more")
    beside = children(settings, args.workers)
    link = prepare(settings, host, port)
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    out(f"promptdex is serving on http://{shown}:{port}  (API docs: http://{shown}:{port}/docs)")
    if link:
        minutes = settings.api.login_link_minutes
        out(f"sign in as the local admin with this one-time link (valid once, for {minutes:g} minutes):")
        out(f"    {link}")
    with Children(beside):
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False,
                    proxy_headers=True, forwarded_allow_ips=settings.api.forwarded_allow_ips)
    return 0
