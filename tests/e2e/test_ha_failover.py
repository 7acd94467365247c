"""A pair of nodes sharing one address, end to end: established calls survive the
failover (issue 22).

Node A listens on 127.0.0.1, node B on 127.0.0.2, the same port; both have
`[server] advertise = "127.0.0.10"` and the same dialog key file (copied from A to B, as
an operator copies it). The shared address is a UDP relay in the test, `Vip`, bound on
127.0.0.10 and forwarding to whichever node is active: what the VRRP master's address
does with keepalived (README, "A pair of nodes") when the nodes bind their own
addresses and the master's kernel hands the shared address's traffic to its node
(the address on its interface and a DNAT rule, or a cloud's floating address). SIPp
calls through the shared address, A set them up; A is killed (SIGKILL), the address
moves to B, and the BYEs of those calls, routed by the Record-Route A wrote, reach the
gateway through B and are answered. An INVITE in flight when A dies is lost with A's
transaction; the caller's retransmission reaches B, which takes it as a new transaction
(a new branch to a gateway: a gateway that had the first copy refuses this one as a
merged request, 482, RFC 3261 §8.2.2.2; ours never answered it) and can be cancelled
through B."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import threading
import time

from tests.support.wait import wait_for

from . import harness

VIP = "127.0.0.10"
NODE_A, NODE_B = "127.0.0.1", "127.0.0.2"


class Vip:
    """The shared address: datagrams to VIP:port go to the active node, from a socket
    of the sender's own IP (the node sees the caller's address, as behind a DNAT), and
    what the node sends back on it returns to the sender from VIP:port."""

    def __init__(self, port: int, target: tuple[str, int]):
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((VIP, port))
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.peers: dict[tuple[str, int], socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.sel.select(0.1):
                try:
                    data, addr = key.fileobj.recvfrom(65535)  # type: ignore[union-attr]
                except OSError:
                    continue
                if key.data is not None:  # from a node, for the sender key.data
                    self.sock.sendto(data, key.data)
                    continue
                relay = self.peers.get(addr)
                if relay is None:
                    relay = self.peers[addr] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    relay.bind((addr[0], 0))
                    self.sel.register(relay, selectors.EVENT_READ, addr)
                try:
                    relay.sendto(data, self.target)
                except OSError:
                    pass  # the node is gone: the packet is lost, as on a real failover

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in (self.sock, *self.peers.values()):
            s.close()
        self.sel.close()


def requests(gw: harness.Answerer, method: bytes) -> list[tuple[str, int]]:
    """Where the gateway's `method` requests came from (probes left out)."""
    return [src for data, src in zip(list(gw.received), list(gw.sources)) if data.startswith(method + b" ")]


def shared_port() -> int:
    """A UDP port free on the nodes' addresses and on the shared one."""
    for _ in range(50):
        port = harness.free_port("udp")
        ok = True
        for host in (NODE_B, VIP):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((host, port))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return port
    raise RuntimeError("no UDP port free on 127.0.0.1, 127.0.0.2 and 127.0.0.10")


def test_established_calls_end_through_the_other_node(tmp_path):
    calls = 4
    port = shared_port()
    config = f'[server]\nadvertise = "{VIP}"\n'
    # The gateway answers where each request comes from (RFC 3261 §18.2.2: the node's own
    # address, the `received` of its Via): SIPp's UAS would answer the BYE to A, where the
    # call's INVITE came from.
    gw = harness.Answerer()
    listing = harness.dispatcher_list(f"sip:{harness.HOST}:{gw.port}")
    a = harness.Proxy(tmp_path / "a", listing, config, listen=(f"udp:{NODE_A}:{{port}}",), port=port)
    # B runs two workers: the primary's socket and each worker's own port.
    b = harness.Proxy(tmp_path / "b", listing, config + "workers = 2\n", listen=(f"udp:{NODE_B}:{{port}}",),
                      port=port)
    vip = Vip(port, (NODE_A, port))

    try:
        a.start()
        # The dialog key A made at its first start, copied to B (mode 0600 kept).
        shutil.copy2(a.dir / "dialog.key", b.dir / "dialog.key")
        b.start()
        result: list[harness.UacResult] = []
        uac = threading.Thread(target=lambda: result.append(harness.run_uac(
            f"{VIP}:{port}", "uac.xml", calls=calls, rate=20, timeout_s=20,
            extra_args=["-d", "3000"], workdir=tmp_path / "uac")))
        uac.start()
        wait_for(lambda: len(requests(gw, b"ACK")) >= calls, timeout=8,
                 message=lambda: f"gateway got {len(gw.received)} messages; A: {a.log()[-2000:]}")
        assert not requests(gw, b"BYE"), "the calls ended before the failover"
        assert {ip for ip, _ in requests(gw, b"INVITE")} == {NODE_A}
        # A dies; the shared address moves to B.
        assert a.proc is not None
        os.kill(a.pid, signal.SIGKILL)
        a.proc.wait(timeout=5)
        vip.target = (NODE_B, port)
        uac.join(30)
        assert result, "the UAC did not finish"
        r = result[0]
        assert r.successful == calls and r.failed == 0, f"{r}\nB: {b.log()[-3000:]}"
        byes = requests(gw, b"BYE")
        assert len(byes) == calls and {ip for ip, _ in byes} == {NODE_B}, byes
    finally:
        vip.close()
        gw.close()
        b.stop()
        a.stop()


def test_an_invite_in_flight_is_a_new_transaction_on_the_other_node(tmp_path):
    port = shared_port()
    config = f'[server]\nadvertise = "{VIP}"\n'
    gw = harness.Answerer(rings=True)  # 180, never a final answer: the INVITE stays in flight
    listing = harness.dispatcher_list(f"sip:{harness.HOST}:{gw.port}")
    a = harness.Proxy(tmp_path / "a", listing, config, listen=(f"udp:{NODE_A}:{{port}}",), port=port)
    b = harness.Proxy(tmp_path / "b", listing, config, listen=(f"udp:{NODE_B}:{{port}}",), port=port)
    vip = Vip(port, (NODE_A, port))
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind((harness.HOST, 0))
    caller.settimeout(0.2)
    lp = caller.getsockname()[1]
    try:
        a.start()
        shutil.copy2(a.dir / "dialog.key", b.dir / "dialog.key")
        b.start()
        ids = {"call_id": "inflight-1", "branch": "z9hG4bKinflight1", "from_tag": "c1"}
        invite = harness.build_request("INVITE", f"sip:svc@{VIP}:{port}", local_port=lp, **ids)
        caller.sendto(invite, (VIP, port))
        assert 180 in harness.statuses_until(caller, 180), "no 180 through A"
        assert [ip for ip, _ in requests(gw, b"INVITE")] == [NODE_A]
        assert a.proc is not None
        os.kill(a.pid, signal.SIGKILL)
        a.proc.wait(timeout=5)
        vip.target = (NODE_B, port)
        # The caller's retransmission (the same request, RFC 3261 §17.1.1.2) reaches B.
        caller.sendto(invite, (VIP, port))
        assert 180 in harness.statuses_until(caller, 180), "no 180 through B"
        assert [ip for ip, _ in requests(gw, b"INVITE")] == [NODE_A, NODE_B]
        first, second = (harness._sip().parse_message(x) for x in gw.invites)
        assert first.call_id == second.call_id and first.vias[0].branch != second.vias[0].branch
        # B's transaction is whole: the caller's CANCEL ends it (200, then 487).
        cancel = harness.build_request("CANCEL", f"sip:svc@{VIP}:{port}", local_port=lp, **ids)
        caller.sendto(cancel, (VIP, port))
        codes: list[int | None] = []
        deadline = time.monotonic() + 3
        while 487 not in codes and time.monotonic() < deadline:
            codes += harness.statuses_until(caller, 487, timeout=0.5)
        assert 487 in codes, codes
        assert len(gw.cancels) == 1
    finally:
        caller.close()
        vip.close()
        gw.close()
        b.stop()
        a.stop()
