"""Several worker processes on one port (`--workers N`, gdispatch.cluster), end to end.

What each test proves: calls of one SIPp caller are spread over the workers and every
message of a call (INVITE, retransmission, CANCEL, ACK, BYE) meets the worker that owns
it; the operator sees one state per destination and one list; a reload, a state change,
a traffic failure and a state restored at a restart reach every worker; SIGTERM stops
them all; a worker that dies is started again; a port somebody else holds is refused.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from gdispatch.cluster.relay import call_id_owner
from gdispatch.sip import build_response, parse_message
from tests.support.wait import wait_for

from . import harness

HOST = "127.0.0.1"


def stats(p: harness.Proxy) -> dict:
    out = p.rpc("stats", json_out=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def workers_of(p: harness.Proxy) -> list[int]:
    return harness._children(p.pid)


def udp_socket(timeout: float | None = None) -> socket.socket:
    """A UDP socket on an ephemeral port of HOST."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.settimeout(timeout)
    return s


def relayed_at_start(p: harness.Proxy) -> int:
    """The datagrams relayed before the test sent any: the harness's OPTIONS that came
    while the proxy was binding its sockets, before the kernel's program was on them
    (gdispatch.cluster.steering), are in socket 0 whatever their Call-ID. The primary
    starts reading it once the workers listen (gdispatch.app) and hands them on in the
    event loop's next turn, long before this `stats` call, a new process, reaches it."""
    return stats(p)["relayed_to_other_workers"]


def stats_when(p: harness.Proxy, cond, timeout: float) -> dict:
    """The proxy's stats once `cond(stats)` holds (polled; the test fails after `timeout` s)."""
    return wait_for(lambda: (lambda s: cond(s) and s)(stats(p)), timeout, 0.1, message=lambda: stats(p))


def test_calls_spread_over_two_workers(proxy, uas, uac):
    # 500 calls (2 s at 250 calls/s). Which worker owns a call is a hash of its Call-ID,
    # so a worker's share is binomial: standard deviation 11 calls around 250, against
    # bounds of 150 and 350, about nine deviations away; likewise the relayed messages.
    # Round robin is exact in each worker: the gateways are within a call per worker of
    # 250.
    gws = [uas(), uas()]
    p = proxy(harness.dispatcher_list(*gws), args=["--workers", "2"])
    assert len(workers_of(p)) == 1  # the primary and one more
    relayed_before = relayed_at_start(p)
    res = uac(f"{HOST}:{p.port}", calls=500, rate=250, timeout_s=60)
    assert (res.successful, res.failed) == (500, 0), res
    for g in gws:
        g.stop()
    counts = [g.counts() for g in gws]
    assert sum(c["INVITE"] for c in counts) == 500, counts
    for c in counts:
        # Each ACK and BYE found its way, in the order the caller sent them: the worker
        # that owns the call forwards both (gdispatch.cluster.steering).
        assert c["BYE"] == c["INVITE"] == c["ACK"] and c["unexpected"] == 0, counts
    # Round robin in each worker over its share: even overall, within a call per worker.
    assert all(abs(c["INVITE"] - 250) <= 2 for c in counts), counts
    s = stats_when(p, lambda x: x["dispatched"] == 500, 5)
    assert s["workers"] == 2 and s["workers_ready"] == 2, s
    # One caller's calls were owned by both workers, about half each...
    assert all(150 < n < 350 for n in s["dispatched_by_worker"]), s
    if s["kernel_steering"]:
        # ... and the kernel gave every datagram to its owner at once (gdispatch.cluster.steering).
        assert s["relayed_to_other_workers"] == relayed_before, s
    else:
        # ... and about half of them (INVITE, ACK, BYE of each call) went over the relay.
        assert 0.3 * 1500 < s["relayed_to_other_workers"] < 0.7 * 1500, s
    assert s["relay_dropped"] == 0, s
    sent = {d["URI"]: d["CALLS_SENT"] for d in s["destinations"]}
    assert sorted(sent.values()) == sorted(c["INVITE"] for c in counts), (sent, counts)


def test_cancel_and_retransmissions_meet_the_owner(proxy, uas, uac):
    gw = uas("uas_ring_cancel.xml")
    p = proxy(harness.dispatcher_list(gw), args=["--workers", "2"])
    res = uac(f"{HOST}:{p.port}", "uac_cancel.xml", calls=40, rate=20, timeout_s=60)
    # The scenario checks the caller got 200 for its CANCEL and 487 for its INVITE.
    assert (res.successful, res.failed) == (40, 0), res
    gw.stop()
    c = gw.counts()
    assert c["INVITE"] == 40 and c["CANCEL"] == 40 and c["ACK"] == 40, c


def _recv(sock: socket.socket, timeout: float) -> list[bytes]:
    """Every datagram `sock` receives within `timeout` seconds."""
    got = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            break
    return got


def _header(data: bytes, name: bytes) -> str:
    return re.search(rb"\r\n" + name + rb": *([^\r]*)", data).group(1).decode()


@pytest.mark.parametrize("routed", [False, True], ids=["initial-invite", "re-invite"])
def test_the_ack_of_a_refused_invite_ends_the_transaction_of_its_owner(proxy, routed):
    """The ACK of a non-2xx final reaches the INVITE transaction in the worker that owns
    the call (gdispatch.cluster.steering), which absorbs it: the caller gets the final once (no
    Timer G resends) and the gateway gets only the proxy's own ACK of it; without a
    Route, and with one (a re-INVITE refused with 488)."""
    gw, uac = udp_socket(3), udp_socket(3)
    gw_uri = f"sip:gw@{HOST}:{gw.getsockname()[1]}"

    def final(status: int) -> bytes:
        uac.settimeout(3)
        while harness.status_code(data := uac.recv(65535)) != status:
            pass
        return data

    try:
        p = proxy(f"1 sip:{HOST}:{gw.getsockname()[1]} 0 0\n", args=["--workers", "2"],
                  config="[probing]\ninterval = 0\n")
        proxy_addr, service = (HOST, p.port), f"sip:service@{HOST}:{p.port}"
        relayed_before = relayed_at_start(p)
        call = dict(local_port=uac.getsockname()[1], call_id=f"refused-{routed}", from_tag="uac1")
        uac.sendto(harness.build_request("INVITE", service, branch="z9hG4bKinvite1", **call), proxy_addr)
        fwd, worker = gw.recvfrom(65535)
        ruri, request = service, dict(call, branch="z9hG4bKinvite1")
        if routed:
            rr = _header(fwd, b"Record-Route")
            gw.sendto(build_response(parse_message(fwd), 200, "OK", to_tag="gw1",
                                     headers=(f"Contact: <{gw_uri}>".encode(), f"Record-Route: {rr}".encode())),
                      worker)
            call.update(to=_header(final(200), b"To"), headers=[f"Route: {rr}"])
            uac.sendto(harness.build_request("ACK", gw_uri, branch="z9hG4bKack1", **call), proxy_addr)
            assert gw.recv(65535).startswith(b"ACK ")  # the ACK of the 2xx, forwarded
            ruri, request = gw_uri, dict(call, cseq=2, branch="z9hG4bKreinvite1")
            uac.sendto(harness.build_request("INVITE", ruri, **request), proxy_addr)
            fwd, worker = gw.recvfrom(65535)
        assert fwd.startswith(b"INVITE ")
        status = 488 if routed else 486
        gw.sendto(build_response(parse_message(fwd), status, "Refused", to_tag="gw2"), worker)
        request["to"] = _header(final(status), b"To")
        uac.sendto(harness.build_request("ACK", ruri, **request), proxy_addr)
        # Timer G would resend the final after 0.5 s and 1.5 s.
        to_uac, to_gw = _recv(uac, 2.0), _recv(gw, 0.1)
        assert to_uac == [], to_uac
        # The gateway got the proxy's ACK of its final (its own branch), nothing else.
        assert len(to_gw) == 1 and to_gw[0].startswith(b"ACK "), to_gw
        assert _header(to_gw[0], b"Via") == _header(fwd, b"Via"), (to_gw, fwd)
        if stats(p)["kernel_steering"]:
            assert stats(p)["relayed_to_other_workers"] == relayed_before  # the kernel gave it to the owner
    finally:
        gw.close()
        uac.close()


@pytest.mark.parametrize("call_id_header", ["Call-ID", "i"])
def test_a_retransmission_from_other_ports_is_absorbed(proxy, uas, call_id_header):
    """The same INVITE sent from 16 source ports reaches the owner of its call, which
    absorbs all but the first: steered there by the kernel, or, with the compact header
    name the kernel's program does not read, spread by SO_REUSEPORT over the workers
    and handed to the owner by the relay."""
    gw = uas()
    p = proxy(harness.dispatcher_list(gw), args=["--workers", "2"])
    relayed_before = relayed_at_start(p)
    socks = []
    try:
        for _ in range(16):
            socks.append(udp_socket(0.3))
        invite = harness.build_request("INVITE", f"sip:service@{HOST}:{p.port}",
                                       local_port=socks[0].getsockname()[1])
        invite = invite.replace(b"\r\nCall-ID:", b"\r\n%s:" % call_id_header.encode())
        for s in socks:
            s.sendto(invite, (HOST, p.port))
            time.sleep(0.05)  # copies spaced as retransmissions are
        statuses = harness.statuses_until(socks[0])
    finally:
        for s in socks:
            s.close()
    assert 200 in statuses, statuses
    # (the other worker reports every second)
    stats_when(p, lambda x: x["retransmissions_absorbed"] == 15, 5)
    # The gateway's counts as of now (it holds the call open: no ACK comes).
    now = time.time()
    counts = wait_for(lambda: gw.counts_since(now), 3, 0.1, message=gw.counts)
    gw.kill()  # a soft exit would wait for the call
    assert counts["INVITE"] == 1, counts
    s = stats(p)
    if call_id_header == "i" or not s["kernel_steering"]:
        assert s["relayed_to_other_workers"] > relayed_before, s
    else:
        assert s["relayed_to_other_workers"] == relayed_before, s


@pytest.mark.parametrize("call_id_header", ["Call-ID", "i"])
def test_a_response_sent_to_the_shared_port_reaches_the_owner(proxy, call_id_header):
    """A gateway that answers to the shared port instead of the Via (the worker's own
    port): the response reaches the worker holding the transaction, steered there by
    the kernel, or (compact header name) relayed by Call-ID. Sent from 20 source ports,
    so SO_REUSEPORT alone would hand copies to each worker."""
    gw, uac = udp_socket(3), udp_socket(3)
    senders = []
    try:
        p = proxy(f"1 sip:{HOST}:{gw.getsockname()[1]} 0 0\n", args=["--workers", "2"],
                  config="[probing]\ninterval = 0\n")
        relayed_before = relayed_at_start(p)
        invite = harness.build_request("INVITE", f"sip:service@{HOST}:{p.port}", local_port=uac.getsockname()[1])
        uac.sendto(invite, (HOST, p.port))
        fwd, worker_addr = gw.recvfrom(65535)
        assert fwd.startswith(b"INVITE") and worker_addr[1] != p.port  # it left from a worker's own port
        ok = build_response(parse_message(fwd), 200, "OK", to_tag="gw1",
                            headers=(f"Contact: <sip:gw@{HOST}:{gw.getsockname()[1]}>".encode(),))
        ok = ok.replace(b"\r\nCall-ID:", b"\r\n%s:" % call_id_header.encode())
        for _ in range(20):
            s = udp_socket()
            senders.append(s)
            s.sendto(ok, (HOST, p.port))
        got = harness.statuses_until(uac)
        assert 200 in got, got
        # The other worker reports every second; every copy met its transaction: none
        # was a stray in the other worker.
        relayed = call_id_header == "i"
        s = stats_when(p, lambda x: x["responses"] >= 20
                       and (x["relayed_to_other_workers"] > relayed_before or not relayed), 5)
        assert s["responses"] >= 20 and s["stray_responses"] == 0, s
        if relayed or not s["kernel_steering"]:
            assert s["relayed_to_other_workers"] > relayed_before, s
        else:
            assert s["relayed_to_other_workers"] == relayed_before, s
    finally:
        for x in (gw, uac, *senders):
            x.close()


def test_one_state_and_one_list_for_every_worker(proxy, uas, uac):
    a, b = uas(), uas()
    p = proxy(harness.dispatcher_list(a, b), args=["--workers", "2"])
    # The operator's command reaches both workers: no call goes to a disabled gateway.
    out = p.rpc("dispatcher.set_state", "dx", "1", a.uri)
    assert (out.returncode, out.stdout) == (0, "Ok. Dispatcher state updated.\n"), out.stderr
    assert p.states()["gw1"] == "DX", p.states()
    # 100 calls: each worker owns about half of them (a hash of the Call-ID), so a
    # worker the command missed would send it some 25.
    res = uac(f"{HOST}:{p.port}", calls=100, rate=100, timeout_s=60)
    assert (res.successful, res.failed) == (100, 0), res
    # (the UAS rewrite their counts every second)
    wait_for(lambda: b.counts()["INVITE"] == 100, 3, 0.1, message=b.counts)
    assert a.counts()["INVITE"] == 0, a.counts()
    # A reload reaches both workers too: a only, now (it keeps its state across the
    # reload, so it is made active first), and every call goes to it.
    assert p.rpc("dispatcher.set_state", "ap", "1", a.uri).stdout == "Ok. Dispatcher state updated.\n"
    p.list_path.write_text(harness.dispatcher_list(a))
    wait_for(lambda: len(p.states()) == 1, 5, 0.1, message=p.states)
    res = uac(f"{HOST}:{p.port}", calls=100, rate=100, timeout_s=60)
    assert (res.successful, res.failed) == (100, 0), res
    a.stop()
    b.stop()
    assert a.counts()["INVITE"] == 100 and b.counts()["INVITE"] == 100, (a.counts(), b.counts())
    assert p.log().count("reloaded") == 1


def test_the_operators_state_reaches_every_worker_after_a_restart(proxy, uas, uac):
    a, b = uas(), uas()
    p = proxy(harness.dispatcher_list(a, b), args=["--workers", "2"])
    assert p.rpc("dispatcher.set_state", "dx", "1", a.uri).returncode == 0
    assert p.stop() == 0
    p.start()
    assert p.states()["gw1"] == "DX", p.states()
    # 100 calls: each worker owns about half of them (a hash of the Call-ID).
    res = uac(f"{HOST}:{p.port}", calls=100, rate=100, timeout_s=60)
    assert (res.successful, res.failed) == (100, 0), res
    wait_for(lambda: b.counts()["INVITE"] == 100, 3, 0.1, message=b.counts)
    assert a.counts()["INVITE"] == 0, a.counts()
    # The primary alone reads and writes the state file: once per start.
    assert p.log().count("destination states set by the operator are kept in") == 2, p.log()[-3000:]


def test_a_traffic_failure_marks_the_destination_down_for_every_worker(proxy, uas, uac):
    """Pings are slow here (every 30 s), so only the calls' own failures (ICMP port
    unreachable) can mark the dead gateway: whichever worker sees one tells the primary,
    whose state every worker then uses."""
    a, b = uas(), uas()
    p = proxy(harness.dispatcher_list(a, b), args=["--workers", "2"],
              config="[probing]\ninterval = 30\nprobing_threshold = 1\n")
    assert all(v.startswith("A") for v in p.states().values()), p.states()
    a.kill()
    # 100 calls, about half owned by each worker: the first sent to the dead gateway
    # marks it.
    res = uac(f"{HOST}:{p.port}", calls=100, rate=100, timeout_s=60)
    assert (res.successful, res.failed) == (100, 0), res
    states = p.states()
    assert states["gw1"].startswith("I"), states
    b.stop()
    # Every call failed over to b at once, then went there first.
    assert b.counts()["INVITE"] == 100, b.counts()


def test_sigterm_stops_every_worker(proxy, uas):
    gw = uas()
    p = proxy(harness.dispatcher_list(gw), args=["--workers", "3"])
    kids = wait_for(lambda: (lambda k: len(k) == 2 and k)(workers_of(p)), 5, 0.1)
    assert kids and len(kids) == 2, kids
    os.kill(p.pid, signal.SIGTERM)
    assert p.proc.wait(timeout=15) == 0
    for k in kids:
        assert not os.path.exists(f"/proc/{k}") or _zombie(k), f"worker {k} still running"


def test_workers_exit_when_the_primary_dies(proxy, uas):
    gw = uas()
    p = proxy(harness.dispatcher_list(gw), args=["--workers", "2"])
    (kid,) = workers_of(p)
    os.kill(p.pid, signal.SIGKILL)
    p.proc.wait(timeout=5)
    # The worker sees its channel to the primary close, drains and exits: no orphan
    # keeps the port.
    wait_for(lambda: not os.path.exists(f"/proc/{kid}") or _zombie(kid), 10, 0.1, message=f"worker {kid} left behind")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_worker_that_dies_is_started_again(proxy, uas, uac):
    gw = uas()
    p = proxy(harness.dispatcher_list(gw), args=["--workers", "2"])
    relayed_before = relayed_at_start(p)
    (kid,) = workers_of(p)
    os.kill(kid, signal.SIGKILL)
    wait_for(lambda: (lambda k: k and k != [kid] and len(k) == 1)(workers_of(p)), 10, 0.1,
             message=lambda: workers_of(p))
    stats_when(p, lambda x: x["workers_ready"] == 2, 10)
    res = uac(f"{HOST}:{p.port}", calls=200, rate=100, timeout_s=60)
    assert (res.successful, res.failed) == (200, 0), res
    assert "exited with status" in p.log()
    # The new worker took the old one's place: its share of the calls, and with the
    # kernel steering, every datagram straight to its owner.
    s = stats_when(p, lambda x: sum(x["dispatched_by_worker"]) == 200, 5)
    assert all(40 < n < 160 for n in s["dispatched_by_worker"]), s
    if s["kernel_steering"]:
        assert s["relayed_to_other_workers"] == relayed_before, s


def test_while_a_worker_is_down_the_others_answer_for_its_socket(proxy, uas):
    """The primary keeps a dead worker's sockets in the group (so that the new one takes
    its place) and reads them meanwhile: a call the kernel puts there that belongs to a
    live worker (a compact Call-ID, which only the sender's address places) is answered
    at once, not when the worker is back (RESTART_DELAY, 1 s, and its start)."""
    gw = uas()
    p = proxy(harness.dispatcher_list(gw), args=["--workers", "2"])
    (kid,) = workers_of(p)
    socks = []
    try:
        os.kill(kid, signal.SIGKILL)
        killed = time.monotonic()
        # The primary reads the dead worker's sockets before it logs the exit.
        wait_for(lambda: "exited with status" in p.log(), 0.5, 0.1, message=p.log)
        for n in range(16):
            s = udp_socket()
            socks.append(s)
            invite = harness.build_request("INVITE", f"sip:service@{HOST}:{p.port}",
                                           local_port=s.getsockname()[1])
            # A Call-ID the primary (worker 0) owns, in the compact form.
            candidates = (re.sub(rb"\r\nCall-ID:[^\r]*", b"\r\ni: cover-%d-%d" % (n, m), invite) for m in range(99))
            s.sendto(next(c for c in candidates if call_id_owner(c, 2) == 0), (HOST, p.port))
        late = 0
        for s in socks:
            s.settimeout(max(0.01, killed + 0.9 - time.monotonic()))
            try:
                late += harness.status_code(s.recv(65535)) != 100
            except TimeoutError:
                late += 1
        assert late == 0, f"{late} of 16 callers were not answered within 0.9 s of the kill"
    finally:
        for s in socks:
            s.close()


def test_a_port_in_use_is_refused(tmp_path, uas):
    """SO_REUSEPORT would let two processes of one user share a port unnoticed; the
    primary makes sure nobody holds it first."""
    gw = uas()
    holder = udp_socket()
    port = holder.getsockname()[1]
    (tmp_path / "d.list").write_text(harness.dispatcher_list(gw))
    try:
        out = subprocess.run([sys.executable, "-m", "gdispatch", "run", "--list", "d.list",
                              "--listen", f"udp:{HOST}:{port}", "--workers", "2"],
                             capture_output=True, text=True, timeout=20, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(harness.REPO),
                                  "GDISPATCH_SOCKET": str(tmp_path / "c.sock")})
    finally:
        holder.close()
    assert out.returncode == 1, out
    assert f"cannot listen on udp:{HOST}:{port}" in out.stderr and "in use" in out.stderr, out.stderr
