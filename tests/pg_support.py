"""A real, throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, no mock.

One server per test session (`initdb` + `pg_ctl` in a temporary folder), a fresh database per test.
The server refuses to run as root, so as root it runs as the `postgres` user (`runuser`), in a folder
that user owns. It listens on a Unix socket in that folder (local connections: trust) and on
127.0.0.1 at a free port (password auth, scram-sha-256: the wrong-password tests need it). fsync is
off: a test server's durability is not under test, its speed is.

Without the binaries the tests that need them are skipped with the reason, except under CI=true, where
they fail: CI installs Debian's `postgresql` (.ci/run).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

PASSWORD = "irface-test-pw"
USER = "postgres"


def find_bin_dir() -> Optional[Path]:
    """The newest /usr/lib/postgresql/<v>/bin holding initdb, pg_ctl and postgres (or the PATH's)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A running test cluster; `url(db)` for a database in it, `new_database()` for a fresh one."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        # Under /tmp when root: the `postgres` user must reach the folder (a $TMPDIR under /root it could
        # not), and a Unix socket's path must stay under ~100 characters.
        self.folder = Path(tempfile.mkdtemp(prefix="irface-pg-", dir="/tmp" if self.as_root else None))
        self.data = self.folder / "data"
        self.port = _free_port()
        self._names = itertools.count()
        if self.as_root:
            import pwd

            pw = pwd.getpwnam(USER)
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        self.user = USER if self.as_root else os.environ.get("USER") or _whoami()

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        full = (["runuser", "-u", USER, "--"] if self.as_root else []) + list(cmd)
        done = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return done

    def start(self) -> "PgServer":
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_root:
            import pwd

            pw = pwd.getpwnam(USER)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        options = (f"-k {self.folder} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
                  "-o", options, "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: as a crash would). The data stays for `restart`."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        options = (f"-k {self.folder} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
                  "-o", options, "-w", "-t", "60", "start")

    def close(self) -> None:
        try:
            self.stop("immediate")  # a throwaway server: no shutdown checkpoint to wait for
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, db: str = "postgres", *, tcp: bool = False, password: Optional[str] = None) -> str:
        """A libpq URL: over the Unix socket (trust), or TCP with `password` (default: the right one)."""
        if tcp:
            return f"postgresql://{self.user}:{password or PASSWORD}@127.0.0.1:{self.port}/{db}"
        return f"postgresql://{self.user}@/{db}?host={self.folder}&port={self.port}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its name."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


def _whoami() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def start_server() -> PgServer:
    """Start a test server, or raise LookupError (no binaries) / RuntimeError (they failed)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise LookupError("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise LookupError("running as root without runuser: cannot start PostgreSQL as another user")
    server = PgServer(bin_dir)
    try:
        return server.start()
    except BaseException:
        shutil.rmtree(server.folder, ignore_errors=True)
        raise
