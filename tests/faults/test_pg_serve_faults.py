"""Faults and load on `irface serve --workers N` over one PostgreSQL gallery, nothing lost (issue #24, part 7).

Real processes and a real server throughout: uvicorn's workers, the session's throwaway PostgreSQL
(tests/pg_support.py), SIGKILL, a server stopped and started again. Everything on loopback; each test
bounded in time. The promises under test are docs/gallery.md's ("Where a gallery lives"): a change is
whole or absent; once answered it is seen by every later search of every worker; concurrent changes
take the change log's one order; a lost database is a 503 in one line and the workers reconnect.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("faiss")
psycopg = pytest.importorskip("psycopg")
httpx = pytest.importorskip("httpx")

from pg_serve_support import (  # noqa: E402
    Served, aligned_crops, faces_by_identity, process_of_client_port, wait_backend_gone, wait_for_backends)
from pg_support import PASSWORD  # noqa: E402

pytestmark = [pytest.mark.faults, pytest.mark.slow]

PEOPLE = ("obama", "biden", "kit_harington", "alex_lacamoire", "clapton", "lennon")


@pytest.fixture(scope="module")
def crops():
    return aligned_crops(PEOPLE)


@pytest.fixture(scope="module")
def served(pg_server, tmp_path_factory):
    """One `irface serve --workers 2` for the tests below (each uses its own identities)."""
    url = pg_server.url(pg_server.new_database(), tcp=True)
    server = Served(url, 2, tmp_path_factory.mktemp("serve") / "serve.log")
    yield server
    log = server.close()
    assert PASSWORD not in log  # never printed or logged


def _names_through_each_worker(served: Served, count: int) -> dict[str, list[str]]:
    return {pid: sorted(r.json()["names"]) for pid, r in served.each_worker("GET", "/v1/gallery", count).items()}


def _with_change_lock_held(served: Served, requests: list) -> list:
    """Send `requests` (callables) at once while this test holds the gallery's change lock, so they start
    their changes before any commits; release it once every one waits for it (or, when two went to one
    worker, which runs them one after the other, once one waits); their answers."""
    from irface.gallery.pg import _CHANGE_LOCK

    with psycopg.connect(served.url, autocommit=True) as holder, ThreadPoolExecutor(len(requests)) as pool:
        holder.execute("SELECT pg_advisory_lock(%s)", (_CHANGE_LOCK,))
        try:
            futures = [pool.submit(r) for r in requests]
            waiting = "wait_event_type = 'Lock' AND wait_event = 'advisory'"
            try:
                wait_for_backends(served.url, waiting, len(requests), timeout=10)
            except AssertionError:
                wait_for_backends(served.url, waiting, 1)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (_CHANGE_LOCK,))
        return [f.result() for f in futures]


def test_two_workers_enrolling_one_identity_at_once_both_append(served, crops):
    """docs/gallery.md: an enrolment appends; two at once both add their faces, whichever commits first."""
    rounds = 0
    while True:  # a kept-alive connection may be closed and reopened on the other worker: then again
        rounds += 1
        a, b = served.pinned_clients(2).values()
        answers = _with_change_lock_held(
            served, [lambda a=a: served.enroll("race same", crops["kit_harington"][:1], client=a),
                     lambda b=b: served.enroll("race same", crops["kit_harington"][1:2], client=b)])
        a.close(), b.close()
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        if len({r.headers["x-irface-worker"] for r in answers}) == 2 or rounds == 5:
            break
    assert len({r.headers["x-irface-worker"] for r in answers}) == 2, "the enrolments never met two workers"
    assert faces_by_identity(served.url)["race same"] == 2 * rounds
    for pid, r in served.each_worker("GET", "/v1/gallery", 2).items():
        assert "race same" in r.json()["names"], pid


def test_a_removal_racing_an_enrolment_takes_the_logs_order(served, crops):
    """docs/gallery.md: the removal removes the faces enrolled before it in the log's order and none after:
    the identity ends with no face (enrolment first) or exactly the new face (removal first)."""
    assert served.enroll("race removed", crops["clapton"][:2]).status_code == 200
    earlier = _face_ids(served.url, "race removed")
    a, b = served.pinned_clients(2).values()  # the enrolment on one worker, the removal on the other
    enrol, removal = _with_change_lock_held(
        served, [lambda: served.enroll("race removed", crops["clapton"][1:2], client=a),
                 lambda: served.remove("race removed", client=b)])
    a.close(), b.close()
    assert enrol.status_code == 200 and removal.status_code == 200, (enrol.text, removal.text)
    removed = removal.json()["removed"]
    left = _face_ids(served.url, "race removed")
    assert (removed, len(left)) in ((3, 0), (2, 1))  # enrolment first, or removal first
    assert not left & earlier  # what is left is the racing enrolment's face, never one enrolled before
    with psycopg.connect(served.url) as conn:
        pictures = conn.execute("SELECT count(*) FROM irface_thumbnails t JOIN irface_faces f ON f.id = t.face_id "
                                "WHERE f.identity = 'race removed'").fetchone()[0]
    assert pictures == len(left)
    for names in _names_through_each_worker(served, 2).values():
        assert ("race removed" in names) == bool(left)


def _face_ids(url: str, identity: str) -> set[int]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM irface_faces WHERE identity = %s", (identity,))}


def test_a_worker_killed_inside_its_enrolment_leaves_nothing_and_is_replaced(served, crops):
    """SIGKILL the worker whose enrolment has written its faces and pictures but not committed: absent in
    the database and through every worker; uvicorn starts a new worker, which serves the same gallery."""
    assert served.enroll("kill kept", crops["obama"][:1]).status_code == 200
    before = faces_by_identity(served.url)
    with psycopg.connect(served.url) as blocker, ThreadPoolExecutor(1) as pool:
        # Held until the kill: the enrolment stops at its last statement (the log entry), its rows written.
        blocker.execute("LOCK TABLE irface_changes IN EXCLUSIVE MODE")
        pending = pool.submit(served.enroll, "kill lost", crops["biden"])
        (backend, port), = wait_for_backends(served.url, "wait_event_type = 'Lock' AND query LIKE "
                                                         "'INSERT INTO irface_changes%'", 1)
        victim = process_of_client_port(port, served.pids)
        os.kill(int(victim), signal.SIGKILL)
        with pytest.raises(httpx.TransportError):  # the connection dies with the worker: no answer at all
            pending.result()
        blocker.rollback()
    wait_backend_gone(served.url, backend)
    assert faces_by_identity(served.url) == before
    with psycopg.connect(served.url) as conn:
        assert conn.execute("SELECT count(*) FROM irface_thumbnails").fetchone()[0] == sum(before.values())
        assert conn.execute("SELECT count(*) FROM irface_changes WHERE identity = 'kill lost'").fetchone()[0] == 0
    survivor = (served.pids - {victim}).pop()
    new = served.wait_workers(1, exclude=served.pids)  # uvicorn replaced the dead one
    served.pids = {survivor} | new
    for pid, names in _names_through_each_worker(served, 2).items():
        assert names == sorted(before), pid
    probe = crops["obama"][1]
    for pid, r in served.each_worker("POST", "/v1/search", 2, files=[("image", ("p.png", probe, "image/png"))]).items():
        assert r.json()["identity"] == "kill kept", pid
    # And the new worker takes changes like the others: enrol again, seen by both.
    assert served.enroll("kill lost", crops["biden"]).status_code == 200
    for pid, names in _names_through_each_worker(served, 2).items():
        assert "kill lost" in names, pid
    assert "Traceback" not in served.log()


def test_postgres_restarted_under_load_503_then_reconnect_nothing_committed_lost(served, crops, pg_server):
    """Clients enrol and search while PostgreSQL stops and starts again: during the outage 503 with one line
    (no other 5xx, no traceback); afterwards every worker answers again by itself; every enrolment answered
    200 is in the database, and nothing is there that was not asked for."""
    stop = threading.Event()
    answers: list[tuple[str, str, int, str]] = []  # (kind, identity, status, detail)
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=served.base, timeout=120) as http:
            i = 0
            while not stop.is_set():
                i += 1
                who = f"restart {c}-{i}"
                if i % 2:
                    r = served.enroll(who, crops["lennon"][:1], client=http)
                else:
                    r = served.search(crops["lennon"][1], client=http)
                detail = r.json().get("detail", "") if r.status_code != 200 else ""
                with lock:
                    answers.append(("enrol" if i % 2 else "search", who, r.status_code, detail))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, c) for c in range(4)]
        time.sleep(3)
        pg_server.stop("fast")
        try:
            time.sleep(3)
        finally:
            pg_server.restart()
        time.sleep(5)
        stop.set()
        for f in futures:
            f.result()
    statuses = {a[2] for a in answers}
    assert statuses <= {200, 503}, statuses
    outage = [a for a in answers if a[2] == 503]
    assert outage, "no request met the outage"
    for _, _, _, detail in outage:
        assert "\n" not in detail and "Traceback" not in detail and PASSWORD not in detail
        assert "unavailable" in detail or "cannot connect" in detail, detail
    # Every worker answers again by itself (no request was needed to repair anything but their own).
    deadline = time.monotonic() + 60
    while True:
        got = served.each_worker("POST", "/v1/search", 2, files=[("image", ("p.png", crops["lennon"][1], "image/png"))])
        if all(r.status_code == 200 for r in got.values()):
            break
        assert all(r.status_code == 503 for r in got.values() if r.status_code != 200)
        assert time.monotonic() < deadline, "a worker did not reconnect"
    stored = {who for who in faces_by_identity(served.url) if who.startswith("restart ")}
    ok = {a[1] for a in answers if a[0] == "enrol" and a[2] == 200}
    failed = {a[1] for a in answers if a[0] == "enrol" and a[2] == 503}
    assert ok <= stored  # nothing answered is lost
    assert stored <= ok | failed  # and only a change that failed in its commit may have been made
    for pid, names in _names_through_each_worker(served, 2).items():
        assert {n for n in names if n.startswith("restart ")} == stored, pid
    assert "Traceback" not in served.log()


def test_four_workers_sixteen_clients_no_5xx_and_the_ledger_balances(pg_server, crops, tmp_path):
    """4 workers x 16 clients enrolling, searching and removing for 20 s: no 5xx, and the gallery in the
    database and through every worker equals what the clients' answers imply."""
    url = pg_server.url(pg_server.new_database(), tcp=True)
    served = Served(url, 4, tmp_path / "serve.log")
    try:
        ledger: dict[str, int] = {}  # identity -> faces, from the answers
        shared = [0]
        statuses: list[int] = []
        lock = threading.Lock()
        end = time.monotonic() + 20
        people = list(PEOPLE)

        def client(c: int) -> None:
            rng = random.Random(c)
            mine = {f"load {c}-{j}": 0 for j in range(3)}  # only this client changes these: its answers are exact
            with httpx.Client(base_url=served.base, timeout=120) as http:
                while time.monotonic() < end:
                    op, who = rng.random(), rng.choice(sorted(mine))
                    face = rng.choice(crops[rng.choice(people)])
                    if op < 0.4:
                        r = served.search(face, client=http)
                    elif op < 0.7:
                        r = served.enroll(who, [face], client=http)
                        if r.status_code == 200:
                            mine[who] += r.json()["added"]
                    elif op < 0.8:  # every client appends to one identity: concurrent same-identity enrolments
                        r = served.enroll("load shared", [face], client=http)
                        if r.status_code == 200:
                            with lock:
                                shared[0] += 1
                    else:
                        r = served.remove(who, client=http)
                        if mine[who]:
                            assert r.status_code == 200 and r.json()["removed"] == mine[who], (r.status_code, r.text)
                        else:
                            assert r.status_code == 404, r.text
                        mine[who] = 0
                    with lock:
                        statuses.append(r.status_code)
            with lock:
                ledger.update(mine)

        with ThreadPoolExecutor(16) as pool:
            for f in [pool.submit(client, c) for c in range(16)]:
                f.result()
        assert not [s for s in statuses if s >= 500]
        assert set(statuses) <= {200, 404}, set(statuses)
        assert len(statuses) > 16
        expected = {who: n for who, n in ledger.items() if n}
        if shared[0]:
            expected["load shared"] = shared[0]
        assert faces_by_identity(url) == expected
        for pid, r in served.each_worker("GET", "/v1/gallery", 4).items():
            assert sorted(r.json()["names"]) == sorted(expected), pid
            assert r.json()["faces"] == sum(expected.values()), pid
    finally:
        log = served.close()
    assert "Traceback" not in log and PASSWORD not in log
