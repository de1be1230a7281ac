"""Processes register in the broker; one bridge per QPU and consumer name (issue 16, item 3)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
import redis

from coda_bridge import __version__
from coda_bridge.devtools.stack import wait_until
from coda_bridge.state.broker_keys import ready_index_key
from coda_bridge.state.registry import (
    BridgeTaken,
    ProcessInfo,
    Registration,
    bridge_key,
    live_processes,
    process_key,
    ready_jobs_workers,
    ready_key,
)


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_a_registered_process_is_listed_until_it_stops(client: redis.Redis) -> None:
    # given a registered jobs worker
    registration = Registration(client, "q-reg", "jobs").start()
    try:
        # when the processes of the QPU are listed
        found = live_processes(client, "q-reg")
        # then it is there with its role, host, pid and version, and its key expires on its own
        assert [(i.role, i.host, i.pid, i.version) for i in found] == [
            ("jobs", socket.gethostname(), os.getpid(), __version__)
        ]
        assert 0 < client.pttl(registration.key) <= 15_000
        assert live_processes(client, "another-qpu") == []
    finally:
        registration.stop()
    # and once stopped it is gone
    assert live_processes(client, "q-reg") == []


def test_every_role_of_one_process_is_listed(client: redis.Redis) -> None:
    # given one process running the bridge, the workers and the probes (start --one-process)
    registrations = [Registration(client, "q-one", role).start() for role in ("bridge", "node", "web")]
    try:
        # when the processes of the QPU are listed, then each role is there, all with this pid
        found = live_processes(client, "q-one")
        assert [(info.role, info.pid) for info in found] == [
            ("bridge", os.getpid()),
            ("node", os.getpid()),
            ("web", os.getpid()),
        ]
        # and one role stopping leaves the others listed
        registrations.pop().stop()
        assert [info.role for info in live_processes(client, "q-one")] == ["bridge", "node"]
    finally:
        for registration in registrations:
            registration.stop()


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_bridge_replaces_the_registration_of_a_dead_one_on_this_host(client: redis.Redis) -> None:
    # given the bridge key held by a process of this host that is gone (a kill -9, then a restart)
    dead = ProcessInfo.here("bridge", "c-1")
    dead = ProcessInfo(**{**dead.__dict__, "pid": _dead_pid()})
    client.set(bridge_key("q-reg", "c-1"), dead.dumps(), px=15_000)
    # when a new bridge registers under the same consumer name
    registration = Registration(client, "q-reg", "bridge", consumer="c-1").start()
    try:
        # then it holds the key
        assert ProcessInfo.loads(client.get(bridge_key("q-reg", "c-1")) or b"") == registration.info
    finally:
        registration.stop()
    assert client.get(bridge_key("q-reg", "c-1")) is None


def test_a_bridge_refuses_while_a_live_one_of_this_host_holds_the_name(client: redis.Redis) -> None:
    # given the bridge key held by a live process of this host (a sleeping child stands in for it)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = ProcessInfo(**{**ProcessInfo.here("bridge", "c-2").__dict__, "pid": other.pid})
        client.set(bridge_key("q-reg", "c-2"), holder.dumps(), px=15_000)
        # when another bridge tries the same consumer name, then it refuses naming the live one (exit 78)
        with pytest.raises(BridgeTaken, match=rf"pid {other.pid} on {socket.gethostname()}") as raised:
            Registration(client, "q-reg", "bridge", consumer="c-2").start()
        assert raised.value.exit_code == 78
        # and another consumer name is a supported second bridge
        second = Registration(client, "q-reg", "bridge", consumer="c-3").start()
        second.stop()
    finally:
        other.kill()
        other.wait()


def test_a_holder_on_another_host_that_stops_refreshing_is_replaced_once_it_expires(
    client: redis.Redis,
) -> None:
    # given the key held by a process on another host whose registration is about to expire
    holder = ProcessInfo(**{**ProcessInfo.here("bridge", "c-4").__dict__, "host": "elsewhere"})
    client.set(bridge_key("q-reg", "c-4"), holder.dumps(), px=300)
    # when a bridge here registers, then it waits for the expiry and takes the name
    registration = Registration(client, "q-reg", "bridge", consumer="c-4").start()
    try:
        assert ProcessInfo.loads(client.get(bridge_key("q-reg", "c-4")) or b"") == registration.info
    finally:
        registration.stop()


def test_a_zombie_or_a_reused_pid_does_not_hold_the_name(client: redis.Redis) -> None:
    # given the key held by a bridge of this host that exited but was not reaped yet (a zombie)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_until(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 30, "the child to exit")
    try:
        zombie = ProcessInfo(**{**ProcessInfo.here("bridge", "c-5").__dict__, "pid": child.pid})
        client.set(bridge_key("q-reg", "c-5"), zombie.dumps(), px=15_000)
        # when a new bridge registers, then it takes the name
        registration = Registration(client, "q-reg", "bridge", consumer="c-5").start()
        registration.stop()
    finally:
        child.wait()
    # and a registration written an hour before the process with its pid (this one) started is gone,
    # while this process's own registration is alive
    started = psutil.Process().create_time()
    assert ProcessInfo(**{**ProcessInfo.here("bridge", "c-5").__dict__, "since": started - 3600}).dead_here()
    assert not ProcessInfo.here("bridge", "c-5").dead_here()


def test_a_process_of_this_host_that_is_gone_is_not_listed_while_its_key_lives(client: redis.Redis) -> None:
    # given the registration a worker killed -9 left behind (its key lives on for its time to live)
    gone = ProcessInfo(**{**ProcessInfo.here("web").__dict__, "pid": _dead_pid()})
    client.set(process_key("q-gone", gone.host, gone.pid, gone.role), gone.dumps(), px=15_000)

    # when the processes of the QPU are listed, then it is not among them
    assert live_processes(client, "q-gone") == []


def test_only_a_worker_whose_executor_is_built_counts_as_ready(client: redis.Redis) -> None:
    # given a jobs worker registered but still building its executor, and a results worker
    jobs = Registration(client, "q-ready", "jobs").start()
    results = Registration(client, "q-ready", "results").start()
    try:
        # then no jobs worker is ready yet
        assert ready_jobs_workers(client, "q-ready") == []
        # when the jobs worker's executor is built
        jobs.executor_built()
        # then it is listed as ready, the results worker is not
        assert [(i.role, i.pid) for i in ready_jobs_workers(client, "q-ready")] == [("jobs", os.getpid())]
        assert 0 < client.pttl(ready_key("q-ready", socket.gethostname(), os.getpid())) <= 15_000
    finally:
        jobs.stop()
        results.stop()
    # and once it stopped, none is ready
    assert ready_jobs_workers(client, "q-ready") == []


def test_a_ready_worker_of_this_host_that_died_is_not_ready(client: redis.Redis) -> None:
    # given the registration of a ready jobs worker of this host that was killed (its key still lives)
    dead = ProcessInfo(**{**ProcessInfo.here("jobs").__dict__, "pid": _dead_pid(), "executor_ready": True})
    key = ready_key("q-ready2", dead.host, dead.pid)
    client.set(key, dead.dumps(), px=15_000)
    client.zadd(ready_index_key("q-ready2"), {key: (time.time() + 15) * 1000})
    # then it does not count as ready
    assert ready_jobs_workers(client, "q-ready2") == []


class _NoScan(redis.Redis):
    """A client that fails any SCAN: what must not walk the whole keyspace is caught doing it."""

    def scan(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("SCAN of the whole keyspace")


def test_ready_workers_are_found_without_scanning_the_keyspace(redis_url: str) -> None:
    # given a broker with many keys of other families and one jobs worker whose executor is built
    client = _NoScan.from_url(redis_url)
    client.mset({f"coda-bridge:q-index:job:{n}": "x" for n in range(2000)})
    worker = Registration(client, "q-index", "jobs")
    try:
        worker.executor_built()

        # when the ready workers are listed, then it is found, and no SCAN ran (_NoScan raises)
        assert [info.role for info in ready_jobs_workers(client, "q-index")] == ["jobs"]
    finally:
        worker.stop()
        client.close()


def test_the_index_keeps_only_live_ready_keys_and_expires_with_its_last(client: redis.Redis) -> None:
    # given a ready jobs worker of another host whose ready key lapsed (it stopped refreshing)
    index = ready_index_key("q-lapse")
    lapsed = Registration(client, "q-lapse", "jobs", ttl_sec=0.2)
    lapsed.info = ProcessInfo(**{**lapsed.info.__dict__, "host": "gone-host"})
    lapsed.executor_built()
    gone = ready_key("q-lapse", "gone-host", lapsed.info.pid)
    wait_until(lambda: not client.exists(gone), 10, "its ready key to lapse")

    # when a jobs worker of this host marks itself ready
    live = Registration(client, "q-lapse", "jobs", ttl_sec=60)
    mine = ready_key("q-lapse", socket.gethostname(), os.getpid())
    try:
        live.executor_built()
        # then the index holds the live key only, and expires when that key would
        assert client.zrange(index, 0, -1) == [mine.encode()]
        assert 0 < client.pttl(index) <= 60_000
    finally:
        live.stop()
    # and once it stopped, nothing is left of either
    assert client.zcard(index) == 0 and ready_jobs_workers(client, "q-lapse") == []


def test_a_bridge_registration_has_no_executor(client: redis.Redis) -> None:
    registration = Registration(client, "q-ready3", "bridge", consumer="c-1")
    with pytest.raises(ValueError, match="no executor"):
        registration.executor_built()


def test_in_one_process_the_other_registrations_leave_the_ready_mark_alone(client: redis.Redis) -> None:
    # given one process holding a node registration whose executor is built, a web one and a bridge one
    node = Registration(client, "q-one", "node", refresh_sec=0.05).start()
    node.executor_built()
    web = Registration(client, "q-one", "web", refresh_sec=0.05).start()
    bridge = Registration(client, "q-one", "bridge", consumer="c-1", refresh_sec=0.05).start()
    try:
        # when the other registrations of the same process have refreshed their keys
        web_key = process_key("q-one", socket.gethostname(), os.getpid(), "web")
        for _ in range(3):  # each refresh writes the key again: gone, then back
            client.delete(web_key)
            wait_until(lambda: client.exists(web_key), 10, "a refresh of the web registration")
        # then the process still counts as ready
        assert [i.role for i in ready_jobs_workers(client, "q-one")] == ["node"]
    finally:
        for registration in (bridge, web, node):
            registration.stop()
    assert ready_jobs_workers(client, "q-one") == []
