"""A throwaway PostGIS server for the test run.

Starts a fresh cluster in a temporary directory on a free port (fsync off) with
Debian's PostgreSQL and PostGIS packages, and removes it afterwards. Used by
tests/conftest.py unless WANGGE_TEST_DATABASE_URL points at a server already
running.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def find_pg_bindir() -> Path:
    """The newest PostgreSQL whose share directory has the postgis extension."""
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        version = Path(bindir).parent.name
        if Path(f"/usr/share/postgresql/{version}/extension/postgis.control").exists():
            return Path(bindir)
    raise RuntimeError(
        "no PostgreSQL with PostGIS found under /usr/lib/postgresql: "
        "run scripts/install-system-packages.sh (apt-get install postgresql-15-postgis-3)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostGISServer:
    bindir: Path
    datadir: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.datadir / "server.log"),
            "-o",
            f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")


def start_postgis() -> PostGISServer:
    bindir = find_pg_bindir()
    # initdb refuses to run as root; on CI and dev machines we are root, so the
    # cluster belongs to the postgres user that Debian's package creates.
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        pwd.getpwnam(user)
    root = Path(tempfile.mkdtemp(prefix="wangge-pg-"))
    datadir = root / "data"
    if user:
        shutil.chown(root, user)
        os.chmod(root, 0o755)
    server = PostGISServer(bindir, datadir, _free_port(), user)
    server._run(
        str(bindir / "initdb"),
        "-D",
        str(datadir),
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
    )
    server.start()
    return server


def remove(server: PostGISServer) -> None:
    try:
        server.stop("immediate")
    except subprocess.CalledProcessError:
        pass
    shutil.rmtree(server.datadir.parent, ignore_errors=True)


if __name__ == "__main__":  # a manual check: start, print the URL, wait
    srv = start_postgis()
    print(srv.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        remove(srv)
