"""A throwaway PostgreSQL server for the integration tests.

``PostgresServer`` runs ``initdb`` into a fresh temporary directory and starts
``postgres`` on a free loopback port. It needs only the server binaries (Debian:
``apt-get install postgresql``, see ``scripts/install-system-deps.sh``); the system
cluster, if any, is never touched.

PostgreSQL refuses to run as root. When the tests run as root (CI does), initdb,
the server and ``pg_ctl`` run as a dedicated system user ``warden-pg`` (created on
first use with ``useradd --system --no-create-home``). As a normal user they run as
that user, with no switching.

The server listens only on 127.0.0.1 and on a unix socket inside its own data
directory. Durability is off (``fsync=off``): it is for tests only. The superuser is
``warden_admin``, with a random password that the DSNs carry; loopback auth is
``trust`` unless ``host_auth="scram-sha-256"`` is asked for.

    server = PostgresServer()
    server.start()
    try:
        dsn = server.create_database("demo")
    finally:
        server.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

PG_OS_USER = "warden-pg"
ADMIN_ROLE = "warden_admin"
_LOG_TAIL_LINES = 40


class PostgresServerError(RuntimeError):
    """The test server could not be set up, started or stopped."""


# --------------------------------------------------------------------------- binaries


def find_pg_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres.

    ``$WARDEN_PG_BINDIR`` if set, else the highest version under
    ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu layout), else ``PATH``.
    """
    wanted = ("initdb", "pg_ctl", "postgres")
    env = os.environ.get("WARDEN_PG_BINDIR")
    candidates: list[Path] = [Path(env)] if env else []

    def version_key(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    for cand in candidates:
        if all(os.access(cand / exe, os.X_OK) for exe in wanted):
            return cand
    raise PostgresServerError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found under "
        "/usr/lib/postgresql/*/bin or on PATH; run scripts/install-system-deps.sh as root "
        "(Debian: apt-get install postgresql) or set WARDEN_PG_BINDIR"
    )


# --------------------------------------------------------------------------- OS user


def ensure_os_user(name: str = PG_OS_USER, *, timeout: float = 10.0) -> pwd.struct_passwd:
    """Return the passwd entry of ``name``, creating a system user if it is missing.

    Idempotent and safe when several processes race: whoever loses the race sees
    ``useradd`` fail (name in use, or passwd file locked), and then simply waits for
    the entry to appear.
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        cmd = [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
               "--shell", "/usr/sbin/nologin", name]  # fmt: skip
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresServerError(f"cannot create OS user {name!r}: {exc}") from exc
        # 0 = created; 9 = already exists (lost a race); 10 = passwd file busy (retry).
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
        if res.returncode not in (0, 9, 10):
            raise PostgresServerError(
                f"cannot create OS user {name!r} with useradd "
                f"(exit {res.returncode}): {res.stderr.strip()}"
            )
        if time.monotonic() > deadline:
            raise PostgresServerError(
                f"cannot create OS user {name!r} with useradd "
                f"(exit {res.returncode}): {res.stderr.strip()}"
            )
        time.sleep(0.1)


def _traversable_by_all(path: Path) -> bool:
    """Whether every directory from / down to ``path`` is searchable by other users."""
    p = path.resolve()
    for d in (p, *p.parents):
        try:
            if not d.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGQUIT (immediate shutdown) the postmaster when
    this process dies, so a killed test run leaves no server behind."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:  # runs in the child, after the uid switch, before exec
        libc.prctl(pr_set_pdeathsig, int(signal.SIGQUIT), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- server


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, for the lifetime of a test session."""

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        bindir: str | Path | None = None,
        os_user: str = PG_OS_USER,
        host_auth: str = "trust",
        startup_timeout: float = 30.0,
        settings: dict[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.bindir = Path(bindir) if bindir else find_pg_bindir()
        self.run_as: pwd.struct_passwd | None = (
            ensure_os_user(os_user) if os.geteuid() == 0 else None
        )
        self.host_auth = host_auth
        self.startup_timeout = startup_timeout
        self.extra_settings = dict(settings or {})
        # The server gets SIGQUIT when the thread that started it ends (Linux): start
        # it from the main thread, or pass False and call stop() yourself.
        self.die_with_parent = die_with_parent
        self.user = ADMIN_ROLE
        self.password = secrets.token_urlsafe(18)
        self.port: int | None = None
        self.base_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: Any = None
        self._db_counter = 0

    # ------------------------------------------------------------------ paths & DSNs

    @property
    def data_dir(self) -> Path:
        if self.base_dir is None:
            raise PostgresServerError("server not started")
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        if self.base_dir is None:
            raise PostgresServerError("server not started")
        return self.base_dir / "server.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def dsn_for(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URI for ``dbname`` as the admin role (password included)."""
        if self.port is None:
            raise PostgresServerError("server not started")
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(dbname, safe='')}"
        )

    def conninfo_for(self, dbname: str = "postgres") -> str:
        """A libpq ``key=value`` string for ``dbname`` as the admin role."""
        if self.port is None:
            raise PostgresServerError("server not started")
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname
        )

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    @property
    def conninfo(self) -> str:
        return self.conninfo_for("postgres")

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo_for(dbname), **kwargs)

    # ------------------------------------------------------------------ lifecycle

    def _run(self, args: Sequence[str | Path], *, timeout: float = 60.0) -> str:
        """Run a PostgreSQL tool as the server's OS user; return its output."""
        try:
            res = subprocess.run(
                [str(a) for a in args],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.base_dir,
                env=self._env(),
                **self._user_kwargs(),
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresServerError(f"{Path(args[0]).name} timed out after {timeout}s") from exc
        if res.returncode != 0:
            raise PostgresServerError(
                f"{Path(args[0]).name} failed (exit {res.returncode}):\n{res.stdout}{res.stderr}"
            )
        return str(res.stdout) + str(res.stderr)

    def _user_kwargs(self) -> dict[str, Any]:
        if self.run_as is None:
            return {}
        return {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", TZ="UTC")
        if self.run_as is not None:
            env.update(HOME=str(self.base_dir), USER=self.run_as.pw_name,
                       LOGNAME=self.run_as.pw_name)  # fmt: skip
        return env

    def _make_base_dir(self) -> Path:
        parent: str | None = None
        if self.run_as is not None and not _traversable_by_all(Path(tempfile.gettempdir())):
            parent = "/tmp"  # $TMPDIR is private to root; the server user could not reach it
        base = Path(tempfile.mkdtemp(prefix="warden-pg-", dir=parent))
        if self.run_as is not None:
            os.chown(base, self.run_as.pw_uid, self.run_as.pw_gid)
        return base

    def _initdb(self) -> None:
        assert self.base_dir is not None
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.run_as is not None:
            os.chown(pwfile, self.run_as.pw_uid, self.run_as.pw_gid)
        try:
            self._run([
                self.bindir / "initdb", "-D", self.data_dir, "-U", self.user,
                f"--pwfile={pwfile}", "--auth=trust", "--encoding=UTF8", "--no-locale",
                "--no-sync",
            ])  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        # Loopback and the private socket only; nothing else may connect.
        (self.data_dir / "pg_hba.conf").write_text(
            "# written by tests/pgserver.py\n"
            "local all all trust\n"
            f"host  all all 127.0.0.1/32 {self.host_auth}\n"
        )

    def _settings(self, port: int) -> dict[str, str]:
        settings = {
            "listen_addresses": self.host,
            "port": str(port),
            "unix_socket_directories": str(self.data_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "50",
            "jit": "off",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "timezone": "UTC",
        }
        settings.update(self.extra_settings)
        return settings

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in self._settings(port).items():
            args += ["-c", f"{key}={value}"]
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            cwd=self.base_dir,
            env=self._env(),
            start_new_session=True,  # a Ctrl-C in the terminal is pytest's to handle
            preexec_fn=_die_with_parent() if self.die_with_parent else None,
            **self._user_kwargs(),
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, PostgresServerError):
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> str | None:
        """Poll until the server accepts connections. Returns None when ready, else why not."""
        last = "no attempt"
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                return f"postgres exited with code {code}"
            try:
                with psycopg.connect(self.conninfo, connect_timeout=2):
                    return None  # over TCP, with the password: exactly what the tests use
            except psycopg.OperationalError as exc:
                last = str(exc).strip()
            time.sleep(0.02)
        return f"not ready after {self.startup_timeout:.0f}s (last error: {last})"

    def start(self) -> PostgresServer:
        """initdb and start the server; return once it accepts connections."""
        if self._proc is not None:
            return self
        t0 = time.monotonic()
        self.base_dir = self._make_base_dir()
        try:
            self._initdb()
            problem: str | None = "not started"
            for _attempt in range(3):  # the free port may be taken before postgres binds it
                self.port = free_port(self.host)
                self._proc = self._spawn(self.port)
                problem = self._wait_ready(self._proc, time.monotonic() + self.startup_timeout)
                if problem is None:
                    break
                self._terminate()
                if "could not bind" not in self.log_tail() and "in use" not in self.log_tail():
                    break
            if problem is not None:
                raise PostgresServerError(
                    f"PostgreSQL test server did not start: {problem}\n"
                    f"--- server log (last {_LOG_TAIL_LINES} lines) ---\n{self.log_tail()}"
                )
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _terminate(self) -> None:
        """Stop the postmaster we started: pg_ctl, then signals to its pid."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(PostgresServerError, OSError):
                self._run([self.bindir / "pg_ctl", "stop", "-D", self.data_dir,
                           "-m", "fast", "-w", "-t", "10"], timeout=20)  # fmt: skip
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def pause(self) -> None:
        """Stop the server but keep its data and port, to test clients across a restart."""
        self._terminate()

    def resume(self) -> PostgresServer:
        """Start a paused server again on the same port and data."""
        if self._proc is not None:
            return self
        if self.base_dir is None or self.port is None:
            raise PostgresServerError("resume() needs a server that was started and paused")
        self._proc = self._spawn(self.port)
        problem = self._wait_ready(self._proc, time.monotonic() + self.startup_timeout)
        if problem is not None:
            raise PostgresServerError(f"PostgreSQL did not come back: {problem}\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        """Stop the server and delete its directory. Idempotent."""
        self._terminate()
        base, self.base_dir = self.base_dir, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        self.port = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ databases

    def _unique_name(self, prefix: str) -> str:
        self._db_counter += 1
        stem = re.sub(r"[^a-z0-9_]+", "_", prefix.lower()).strip("_") or "db"
        suffix = f"_{os.getpid()}_{self._db_counter}"
        return stem[: 63 - len(suffix)] + suffix

    def create_database(self, name: str | None = None, *, prefix: str = "test") -> str:
        """Create database ``name`` (or a unique one from ``prefix``); return its DSN."""
        dbname = name or self._unique_name(prefix)
        with self.connect(autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template1").format(sql.Identifier(dbname))
            )
        return self.dsn_for(dbname)

    def drop_database(self, name: str) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def database(self, prefix: str = "test") -> Iterator[str]:
        """A fresh database for the ``with`` block, dropped afterwards; yields its DSN."""
        name = self._unique_name(prefix)
        dsn = self.create_database(name)
        try:
            yield dsn
        finally:
            self.drop_database(name)
