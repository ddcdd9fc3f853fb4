"""Bad PostgreSQL galleries through the CLI: one line each, exit 2, no traceback, the password never shown.

tests/test_gallery_pg_cli.py covers `irface gallery info` on a wrong password, an unreachable server, an
empty database and a missing one; here the remaining cases (a malformed URL, another program's tables,
another schema version) and every case through `irface serve --workers 2`, which checks the gallery
once, before any worker starts.
"""

from __future__ import annotations

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("faiss")

from fault_support import assert_one_line, run_cli  # noqa: E402
from pg_support import PASSWORD  # noqa: E402
from serve_support import MODEL  # noqa: E402

pytestmark = pytest.mark.faults

SECRET = "s3cret-pw"


def _bad_urls(pg_server) -> dict[str, tuple[str, str]]:
    """URL -> (what the line says, what else it must say); each URL carries SECRET where it has a password."""
    others = pg_server.new_database()
    with psycopg.connect(pg_server.url(others), autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int, email text)")
    old = pg_server.new_database()
    with psycopg.connect(pg_server.url(old), autocommit=True) as conn:
        conn.execute("CREATE TABLE irface_meta (key text PRIMARY KEY, value text, blob bytea)")
        conn.execute("INSERT INTO irface_meta (key, value) VALUES ('schema_version', '0')")
    db = pg_server.new_database()
    return {
        f"postgresql://postgres:{SECRET}@127.0.0.1:{pg_server.port}/{db}?sslmode=nonsense": ("invalid sslmode value", "***"),
        f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/{db}": ("invalid integer value", "***"),
        f"postgresql://postgres:{SECRET}@[::1/{db}": ("not a valid PostgreSQL URL", "(unparsable URL)"),
        f"postgresql://postgres:{SECRET}@127.0.0.1:{pg_server.port}/{db}?no_such_option=1": ("not a valid PostgreSQL URL", ""),
        pg_server.url(db, tcp=True, password=SECRET): ("password authentication failed", "***"),
        f"postgresql://postgres:{SECRET}@127.0.0.1:1/{db}": ("cannot connect", "***"),
        pg_server.url(others, tcp=True): ("other tables (users)", "***"),
        pg_server.url(old, tcp=True): ("schema version 0, this irface reads 1", "***"),
    }


def test_bad_galleries_are_one_line_through_gallery_commands(pg_server, capsys):
    for url, (why, shown) in _bad_urls(pg_server).items():
        for argv in (["gallery", "info", url], ["gallery", "remove", url, "someone"]):
            code, out, err = run_cli(argv, capsys)
            line = assert_one_line(code, err, why, shown)
            assert SECRET not in line and SECRET not in out and PASSWORD not in line


def test_bad_galleries_are_one_line_through_serve_workers(pg_server, capsys):
    for url, (why, shown) in _bad_urls(pg_server).items():
        code, out, err = run_cli(["serve", "--model", MODEL, "--gallery", url, "--workers", "2", "--device", "cpu"],
                                 capsys)
        line = assert_one_line(code, err, why, shown)
        assert SECRET not in line and SECRET not in out and PASSWORD not in line
