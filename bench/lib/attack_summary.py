"""The summary `make bench-attack` ends with: from the result.txt of each proxy under one
run directory (written by bench/lib/attack.py), one table per kind of attack, one row per
proxy, then the details that do not fit in a column (what the oversized message got,
what each refusal answered).

    python bench/lib/attack_summary.py bench-results/attack_<stamp>
"""

from __future__ import annotations

import sys
from pathlib import Path

from summary import read  # bench/lib, beside this file: result.txt as a dict

AMP_KINDS = ["foreign", "noroute", "malformed", "maxfwd0", "options", "bye"]


def table(title: str, head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"## {title}", "  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in rows]
    return lines + [""]


def per_s(v: str) -> str:
    try:
        return f"{int(v):,}"
    except ValueError:
        return v


def main(run_dir: str) -> int:
    paths = sorted(Path(run_dir).glob("*/result.txt"), key=lambda p: p.stat().st_mtime)
    if not paths:
        print(f"no result.txt under {run_dir}")
        return 1
    rs = [read(p) for p in paths]
    g = lambda r, k: r.get(k, "NA")  # noqa: E731 - a short accessor for the rows below
    settings = Path(run_dir, "settings.txt")
    print(f"# one run, one proxy after another, same machine and settings ({run_dir})")
    if settings.exists():
        print("# " + settings.read_text().strip().replace("\n", "; "))
    ran = set(" ".join(r.get("scenarios", "") for r in rs).split())
    out: list[str] = []
    if ran & {"junk", "invite"}:
        out += table(
            "1-2. floods from 127.0.0.66 while 127.0.0.1 places calls (ok = completed calls; flood/s = datagrams "
            "the flooder sent per second; drops = datagrams the kernel dropped at the proxy's full socket)",
            ["proxy", "junk_ok", "failed", "retrans", "flood/s", "drops", "invite_ok", "failed", "retrans",
             "flood/s", "drops", "answers_to_flooder"],
            [[g(r, "mode"), f"{g(r, 'junk_ok')}/{g(r, 'junk_calls')}", g(r, "junk_failed"), g(r, "junk_retrans"),
              per_s(g(r, "junk_flood_rate")), per_s(g(r, "junk_proxy_udp_drops")),
              f"{g(r, 'invite_ok')}/{g(r, 'invite_calls')}", g(r, "invite_failed"), g(r, "invite_retrans"),
              per_s(g(r, "invite_flood_rate")), per_s(g(r, "invite_proxy_udp_drops")),
              per_s(g(r, "invite_flood_replies"))] for r in rs])
    if "tcp" in ran:
        out += table(
            "3. TCP connections from 127.0.0.66 held idle (held = established at the proxy's port, kernel view, "
            "at the end of the opening and 10 s later); answers while held: yes/no and seconds (5 s allowed)",
            ["proxy", "asked", "held", "held_10s", "opening_s", "stopped_by", "proxy_fds", "tcp_OPTIONS",
             "udp_OPTIONS", "control", "control_unattacked"],
            [[g(r, "mode"), per_s(g(r, "tcp_asked")), per_s(g(r, "tcp_held_peak")), per_s(g(r, "tcp_held_10s")),
              g(r, "tcp_open_s"), g(r, "tcp_stop_reasons"), per_s(g(r, "tcp_proxy_fds")), g(r, "tcp_held_tcp"),
              g(r, "tcp_held_udp"), g(r, "tcp_held_ctl"), g(r, "tcp_base_ctl")] for r in rs])
    if "amp" in ran:
        out += table(
            "4. amplification: bytes back / request bytes (datagrams back), one request each from 127.0.0.77",
            ["proxy", *AMP_KINDS],
            [[g(r, "mode"), *(f"{g(r, f'amp_{k}_ratio')} ({g(r, f'amp_{k}_rx_dgrams')})" for k in AMP_KINDS)]
             for r in rs])
    if ran & {"relay", "ctl"}:
        out += table(
            "5-6. forged in-dialog requests relayed to 127.0.0.5 (yes = leaked); control socket with idle "
            "connections (open/refused, then one command: yes/no and seconds)",
            ["proxy", "BYE", "INVITE", "ACK", "ctl_idle_open", "refused", "control", "control_unattacked"],
            [[g(r, "mode"), g(r, "relay_bye"), g(r, "relay_invite"), g(r, "relay_ack"), g(r, "ctl_idle_open"),
              g(r, "ctl_idle_refused"), g(r, "ctl_idle"), g(r, "ctl_base")] for r in rs])
    out.append("## details")
    for r in rs:
        m = g(r, "mode")
        for k in ("junk", "invite"):
            if k in ran:
                out.append(f"{m}: {k} flood: the caller got {g(r, f'{k}_caller_errors')} (error responses), "
                           f"{g(r, f'{k}_caller_timeouts')} receive timeouts; proxy CPU "
                           f"{g(r, f'{k}_proxy_cpu_pct')} % of one core, whole machine {g(r, f'{k}_box_cpu_pct')} % "
                           f"(200 = both cores); the proxy's counters: {g(r, f'{k}_proxy_stats')}")
        if "tcp" in ran:
            out.append(f"{m}: 70,000-byte TCP message without end: {g(r, 'tcp_oversized')}")
            out.append(f"{m}: TCP opening: {g(r, 'tcp_holders')} process(es) (RLIMIT_NOFILE "
                       f"{g(r, 'tcp_holder_nofile')}), client side held {g(r, 'tcp_client_held')} then "
                       f"{g(r, 'tcp_client_held_10s')}, closed by the proxy {g(r, 'tcp_closed_by_proxy')}, timed out "
                       f"{g(r, 'tcp_connect_timed_out')}, errors {g(r, 'tcp_connect_errors')}")
        if "amp" in ran:
            out.append(f"{m}: refusals answered: " + "; ".join(f"{k} {g(r, f'amp_{k}_first')}" for k in AMP_KINDS))
        errs = [f"{k}: {v}" for k, v in r.items() if k.endswith("_error")]
        dead = [k for k, v in r.items() if k.endswith("_alive") and v == "0"]
        if errs or dead:
            out.append(f"{m}: PROBLEMS: " + "; ".join(errs + [f"{k}=0 (the proxy died)" for k in dead]))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
