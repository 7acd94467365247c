"""``dispatcher.list`` as Kamailio 5.6 builds it, field for field: which fields a
destination shows in each mode (none, ``short``, ``full``, and gdispatch's ``extended``),
in which order and units, and the order of the sets (`kamailio_set_order`); and
gdispatch's ``cluster`` mode (`cluster_structure`): every node's view of each destination.
gdispatch.control.methods answers the RPC with it; gdispatch.control.client prints it as
kamcmd does.
"""

from __future__ import annotations

from typing import Any

from gdispatch.dispatcher.destination import Destination, DispatcherList

# Kamailio's proto ids, for PROTOID of ``dispatcher.list full``.
_PROTO_IDS = {"udp": 1, "tcp": 2, "tls": 3, "sctp": 4, "ws": 5, "wss": 6}


def kamailio_set_order(setids: list[int]) -> list[int]:
    """The order in which Kamailio's ``dispatcher.list`` prints sets, given the set ids in
    the order the list first names them: Kamailio keeps its sets in an AVL tree, filled
    as it reads the list, and prints it in post-order (children before their parent), so
    that "1, 2" prints as "2, 1". The tree's shape depends only on the insertion order,
    whatever AVL code builds it."""
    tree: dict[int, tuple[int | None, int | None, int]] = {}  # id: (left, right, height)

    def height(n: int | None) -> int:
        return tree[n][2] if n is not None else 0

    def node(n: int, left: int | None, right: int | None) -> int:
        tree[n] = (left, right, 1 + max(height(left), height(right)))
        return n

    def rotate_right(n: int) -> int:
        left, right, _ = tree[n]
        assert left is not None
        ll, lr, _ = tree[left]
        return node(left, ll, node(n, lr, right))

    def rotate_left(n: int) -> int:
        left, right, _ = tree[n]
        assert right is not None
        rl, rr, _ = tree[right]
        return node(right, node(n, left, rl), rr)

    def insert(root: int | None, key: int) -> int:
        if root is None:
            return node(key, None, None)
        left, right, _ = tree[root]
        if key < root:
            left = insert(left, key)
        else:
            right = insert(right, key)
        node(root, left, right)
        balance = height(left) - height(right)
        if balance > 1:
            assert left is not None
            if key > left:
                node(root, rotate_left(left), right)
            return rotate_right(root)
        if balance < -1:
            assert right is not None
            if key < right:
                node(root, left, rotate_right(right))
            return rotate_left(root)
        return root

    root: int | None = None
    for setid in setids:
        if setid not in tree:
            root = insert(root, setid)
    order: list[int] = []

    def post_order(n: int | None) -> None:
        if n is not None:
            left, right, _ = tree[n]
            post_order(left)
            post_order(right)
            order.append(n)

    post_order(root)
    return order


def _str_or_null(value: str) -> str | None:
    return value or None  # Kamailio's "<null string>"


def _latency(dest: Destination) -> dict[str, Any]:
    """Kamailio's LATENCY: AVG, STD and EST in milliseconds as doubles (binrpc carries
    three decimals), MAX in whole milliseconds, TIMEOUT a count; zeros before any ping."""
    probe = dest.probe
    if probe is None:
        return {"AVG": 0.0, "STD": 0.0, "EST": 0.0, "MAX": 0, "TIMEOUT": 0}
    return probe.latency.as_dict()


def _dest_structure(dest: Destination, mode: str, runtime: bool) -> dict[str, Any]:
    """One DEST, its members in the order of Kamailio 5.6's ``ds_rpc_print_set``."""
    d: dict[str, Any] = {"URI": dest.uri, "FLAGS": dest.state_letters(), "PRIORITY": dest.priority}
    if mode in ("full", "extended"):
        uri = dest.sip_uri
        addr = dest.address
        d.update({
            "HOST": f"[{uri.host}]" if uri.is_ipv6 else uri.host,
            "IPADDR": addr[0] if addr else "",
            "PORT": uri.port or 0,  # the URI's port, 0 when it names none (Kamailio's port_no)
            # Kamailio's proto id from the transport parameter, 0 (PROTO_NONE) without one
            "PROTOID": _PROTO_IDS.get(uri.params.get("transport") or "", 0),
            "DNSTIME_SEC": 0,
            "DNSTIME_USEC": 0,
        })
        if not dest.usable and dest.unusable:
            # Why it shows IX: no address to send to (a field Kamailio does not have,
            # present only then; Kamailio leaves such a line out of its list).
            d["REASON"] = dest.unusable
    if (mode != "short" and dest.attrs) or mode == "extended":
        m = dest.attr_map
        d["ATTRS"] = {
            "BODY": dest.attrs,
            "DUID": _str_or_null(dest.duid),
            "MAXLOAD": dest.maxload,
            "WEIGHT": dest.weight,
            "RWEIGHT": dest.rweight,
            "SOCKET": _str_or_null(dest.socket),
            "SOCKNAME": _str_or_null(m.get("sockname", "")),
            "OBPROXY": _str_or_null(m.get("obproxy", "")),
        }
    d["LATENCY"] = _latency(dest)
    if runtime or mode == "extended":
        d["RUNTIME"] = {"DLGLOAD": dest.load + dest.load_elsewhere}
    if mode == "extended":
        probe = dest.probe
        d["IDX"] = dest.index
        d["IUID"] = probe.iuid if probe is not None else None
        d["PROBING_COUNT"] = probe.failures if probe is not None else 0
        d["DESCRIPTION"] = _str_or_null(dest.description)
    return d


def list_structure(dlist: DispatcherList, mode: str = "normal", runtime: bool = False) -> dict[str, Any]:
    """``dispatcher.list`` as Kamailio builds it: {NRSETS, RECORDS: [{SET: {ID,
    TARGETS: [{DEST: {...}}]}}]}; `mode` is "short", "normal", "full" or "extended"; `runtime`: show
    ``RUNTIME {DLGLOAD}`` (always in "extended")."""
    records = []
    for setid in kamailio_set_order(list(dlist.sets)):
        dset = dlist.sets[setid]
        targets = [{"DEST": _dest_structure(dest, mode, runtime)} for dest in dset.destinations]
        records.append({"SET": {"ID": setid, "TARGETS": targets}})
    return {"NRSETS": len(records), "RECORDS": records}


def cluster_structure(dlist: DispatcherList, views: dict[str, dict[str, str]], node: str, error: str = "",
                      runtime: bool = False) -> dict[str, Any]:
    """``dispatcher.list cluster``: the list as without a mode, each DEST with ``NODES``:
    one entry per live node that has this destination, {NODE, FLAGS, EST, DLGLOAD} as
    that node sees it (`views`: node -> field -> "LETTERS|EST|CALLS", gdispatch.ha.node);
    with ``NODE`` (which node answers) and ``ERROR`` (the others' views could not be
    read) at the top."""
    from gdispatch.ha.shared import dest_field  # the control package does not need ha otherwise

    out = list_structure(dlist, "normal", runtime)
    for record in out["RECORDS"]:
        dset = dlist.sets[record["SET"]["ID"]]
        for target, dest in zip(record["SET"]["TARGETS"], dset.destinations):
            f = dest_field(dest)
            rows = []
            for n in sorted(views):
                v = views[n].get(f)
                if v is None:
                    continue
                letters, _, rest = v.partition("|")
                est, _, calls = rest.partition("|")
                rows.append({"NODE": n, "FLAGS": letters, "EST": _float(est), "DLGLOAD": _int(calls)})
            target["DEST"]["NODES"] = rows
    out["NODE"] = node
    if error:
        out["ERROR"] = error
    return out


def _float(s: str) -> float:
    try:
        return round(float(s), 3)
    except ValueError:
        return 0.0


def _int(s: str) -> int:
    return int(s) if s.isdigit() else 0
