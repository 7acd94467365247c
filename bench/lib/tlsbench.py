"""The TLS step of the bench (bench/tls.sh, `make bench-tls`, and a step of `make bench`):
calls per second and CPU per call of each proxy with SIP over TLS on both sides and the
connections reused, gdispatch next to Kamailio (its tls module) in the same run.

At the start, `openssl` makes a CA and two certificates signed by it (the proxy's and the
gateway's, both for 127.0.0.1) in OUT/pki. For each proxy of TLS_PROXIES, one after
another:

1. a TLS gateway (bench/lib/tlsload.py, its own process) on a free port, in a dispatcher
   list as `1 sip:127.0.0.1:PORT;transport=tls 0 0 duid=gw1`;
2. the proxy: gdispatch (`--config` GD_CONFIG plus `[tls]` with the proxy's certificate
   and `[tls.client]` with ca_list = the bench CA; `--listen udp:... --listen tls:...
   --workers N --algorithm ALG`), or Kamailio through bench/kamailio/start-tls.sh (the
   same certificates in its tls.cfg; children and tcp_children = N). Ready when it answers
   OPTIONS over UDP;
3. the caller opens TLS_CONNS connections to the proxy's tls: address, kept for the whole
   run of that proxy; warm-up calls (the proxy's connection to the gateway is then open);
4. the proxy's CPU with no calls for TLS_IDLE_S seconds (timers, keepalive pings), then CPU
   per call at a fixed rate: TLS_CPU_RATE calls/s for TLS_CPU_S seconds, as measured and
   with the idle CPU taken out (at a low rate it is a large share of it);
5. the rate search: each rate of TLS_RATES for TLS_STEP_S seconds. A step passes when
   >= TLS_MIN_COMPLETE_PCT % of the calls offered completed (INVITE 200, ACK, BYE 200)
   within the step (the calls' time plus TLS_GRACE_S) and they completed at >=
   TLS_MIN_RATE_FRAC of the rate offered. A failing step runs once more (CONFIRM=1); the
   second failure ends the search. When the caller cannot offer a rate (it kept below
   TLS_MIN_RATE_FRAC of it) the search ends there and says so: that is the generator's
   limit, not the proxy's.

Proxy CPU is utime+stime from /proc of the proxy's PID and its descendants (its workers,
Kamailio's children), over the step, divided by the calls completed; `busiest_pct` is the
share of it the busiest of those processes took (a TLS connection stays with one
gdispatch worker, the kernel's SO_REUSEPORT hash places it: with 2 workers, 50 is an even
spread, 100 all calls on one). The gateway's, the
caller's (this process) and the whole machine's CPU are in each row, to spot contention:
the proxy shares the cores with the generator.

Then (TLS_DIRECT=1) one step with no proxy, caller straight to a gateway, at the highest
rate any proxy was stepped at: passing it shows the generator could carry every rate
measured.

Environment (defaults): PY, OUT (bench-results/tls_<stamp>), TLS_PROXIES (gdispatch-w1
gdispatch-w2, with kamailio-c1 and kamailio-c2 before them when Kamailio and its tls
module are installed), TLS_RATES ("250 500 750 1000 1250 1500 2000 2500"), TLS_STEP_S (4),
TLS_GRACE_S (5), TLS_CPU_RATE (200), TLS_CPU_S (10), TLS_IDLE_S (3), TLS_CONNS (8), TLS_WARMUP (100),
TLS_MIN_COMPLETE_PCT (99), TLS_MIN_RATE_FRAC (0.95), CONFIRM (1), TLS_DIRECT (1), ALG (4),
GD_CONFIG (bench/compare.toml; it must have no [tls] table), KAMAILIO_TLS_START
(bench/kamailio/start-tls.sh), KAMAILIO_MODULES (Kamailio's module directory, when not
the package's), TLS_SUMMARY (1; 0: the table is only written, bench.sh prints it in its
summary).

Files: OUT/<proxy>/steps.tsv, OUT/<proxy>/tls_result.txt (key=value), the proxy's
and the gateway's logs; OUT/summary.txt (the table printed at the end).
`python bench/lib/tlsbench.py --summary OUT` prints the table again.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tlsload  # noqa: E402 - found through the sys.path set above
from maxcps import HZ, ExternalProxy, box_busy_s, env, log, tree_cpu_s  # noqa: E402

from tests.e2e import harness  # noqa: E402
from tests.support.tlspeers import Cert, Pki  # noqa: E402

COLS = ["kind", "rate", "calls", "offered_cps", "completed", "failed", "unfinished", "completed_pct",
        "completed_cps", "proxy_cpu_pct", "proxy_cpu_us_per_call", "busiest_pct", "inv_p50_ms", "inv_p99_ms",
        "gw_cpu_pct", "caller_cpu_pct", "box_cpu_pct", "pass"]


def tree_cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """utime+stime (seconds) of each of pids and their live descendants, from /proc."""
    procs: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            rest = st[st.rfind(")") + 2:].split()
            procs[int(d)] = (int(rest[1]), (int(rest[11]) + int(rest[12])) / HZ)
    members = {p for p in pids if p in procs}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return {p: procs[p][1] for p in members}


def kamailio_tls_missing() -> str | None:
    """Why Kamailio cannot be measured over TLS here, or None when it can."""
    if not (shutil.which("kamailio") or os.access("/usr/sbin/kamailio", os.X_OK)):
        return "Kamailio is not installed (apt-get install -y kamailio kamailio-tls-modules)"
    dirs = [os.environ["KAMAILIO_MODULES"]] if os.environ.get("KAMAILIO_MODULES") else \
        glob.glob("/usr/lib/*/kamailio/modules") + glob.glob("/usr/lib/kamailio/modules") + \
        glob.glob("/usr/local/lib*/kamailio/modules")
    if not any(os.path.exists(os.path.join(d, "tls.so")) for d in dirs):
        return ("Kamailio's TLS module (tls.so) is not installed: apt-get install -y kamailio-tls-modules "
                f"(looked in {', '.join(dirs) or 'no module directory'})")
    return None


class GatewayProcess:
    """tlsload.py's gateway in its own process; `connections` counts the TLS connections
    it accepted (one per proxy process that sends to it, when connections are reused)."""

    def __init__(self, workdir: Path, cert: Cert, time_limit_s: float):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "gateway.log"
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve().parent / "tlsload.py"), "gateway",
                 "--cert", str(cert.cert), "--key", str(cert.key), "--time-limit", str(int(time_limit_s))],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                if line.startswith("ready "):
                    self.port = int(line.split()[1])
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the TLS gateway did not start; see {self.log_path}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def connections(self) -> int:
        return sum(1 for line in self.log_path.read_text().splitlines() if line.startswith("accepted "))

    def stop(self) -> None:
        harness._stop_process(self.proc, signal.SIGTERM, 5.0)


def gdispatch_config(base: Path, proxy: Cert, ca: Path) -> str:
    """GD_CONFIG's settings and the TLS ones: the proxy's certificate for callers, the bench
    CA for the gateway's (verified by name too: 127.0.0.1 is in it)."""
    return (base.read_text() + f'\n[tls]\ncertificate = "{proxy.cert}"\nprivate_key = "{proxy.key}"\n'
            f'method = "TLSv1.2+"\n\n[tls.client]\nca_list = "{ca}"\n')


def default_proxies() -> tuple[list[str], str | None]:
    why = kamailio_tls_missing()
    if why:
        return ["gdispatch-w1", "gdispatch-w2"], why
    return ["kamailio-c1", "gdispatch-w1", "kamailio-c2", "gdispatch-w2"], None


class Run:
    """The settings of one TLS run, and its steps."""

    def __init__(self, out: Path):
        self.out = out
        self.rates = [int(r) for r in env("TLS_RATES", "250 500 750 1000 1250 1500 2000 2500").split()]
        self.step_s = float(env("TLS_STEP_S", "4"))
        self.grace_s = float(env("TLS_GRACE_S", "5"))
        self.cpu_rate = int(env("TLS_CPU_RATE", "200"))
        self.cpu_s = float(env("TLS_CPU_S", "10"))
        self.conns = int(env("TLS_CONNS", "8"))
        self.warmup = max(1, int(env("TLS_WARMUP", "100")))
        self.idle_s = float(env("TLS_IDLE_S", "3"))
        self.min_pct = float(env("TLS_MIN_COMPLETE_PCT", "99"))
        self.min_frac = float(env("TLS_MIN_RATE_FRAC", "0.95"))
        self.confirm = env("CONFIRM", "1") == "1"
        self.alg = env("ALG", "4")
        self.gd_config = Path(env("GD_CONFIG", str(ROOT / "bench" / "compare.toml")))
        self.kamailio_start = env("KAMAILIO_TLS_START", str(ROOT / "bench" / "kamailio" / "start-tls.sh"))
        # a bound on a gateway's life: every step of one proxy, with room to spare
        self.gw_limit_s = 120 + self.cpu_s + 2 * len(self.rates) * (self.step_s + self.grace_s + 5)
        if max(self.step_s, self.cpu_s) > 60:
            raise SystemExit("tlsbench.py: TLS_STEP_S and TLS_CPU_S are at most 60 s")

    def step(self, caller: tlsload.Caller, pids: list[int], gw_pid: int, rate: int, seconds: float,
             kind: str) -> dict[str, object]:
        calls = max(1, int(rate * seconds))
        per0 = tree_cpu_by_pid(pids) if pids else {}
        g0, c0, b0, w0 = tree_cpu_s([gw_pid]), time.process_time(), box_busy_s(), time.monotonic()
        res = caller.step(rate, calls, self.grace_s)
        wall = max(1e-3, time.monotonic() - w0)
        per1 = tree_cpu_by_pid(pids) if pids else {}
        spent = [per1[p] - per0.get(p, 0.0) for p in per1]
        used = sum(spent)
        g1, c1, b1 = tree_cpu_s([gw_pid]), time.process_time(), box_busy_s()
        offered_ok = res.offered_cps >= self.min_frac * rate
        ok = res.completed_pct >= self.min_pct and res.completed_cps >= self.min_frac * res.offered_cps
        row: dict[str, object] = {
            "kind": kind, "rate": rate, "calls": calls, "offered_cps": res.offered_cps, "completed": res.completed,
            "failed": res.failed, "unfinished": res.unfinished, "completed_pct": round(res.completed_pct, 2),
            "completed_cps": res.completed_cps,
            "proxy_cpu_pct": round(100 * used / wall, 1) if pids else "NA",
            "proxy_cpu_us_per_call": round(1e6 * used / res.completed) if pids and res.completed else "NA",
            # the share of the busiest process: how the calls were spread over the workers
            # (a TLS connection stays with one process)
            "busiest_pct": round(100 * max(spent) / used) if used > 0 else "NA",
            "inv_p50_ms": round(res.inv_p50_us / 1000, 1) if res.inv_p50_us is not None else "NA",
            "inv_p99_ms": round(res.inv_p99_us / 1000, 1) if res.inv_p99_us is not None else "NA",
            "gw_cpu_pct": round(100 * (g1 - g0) / wall, 1), "caller_cpu_pct": round(100 * (c1 - c0) / wall, 1),
            "box_cpu_pct": round(100 * (b1 - b0) / wall, 1),
            "pass": "gen" if not offered_ok else int(ok), "wall_s": round(wall, 3),
        }
        if res.broken_conns:
            log(f"{res.broken_conns} of the caller's TLS connections closed")
        if res.failed:
            log(f"final statuses: {res.statuses}")
        log(" ".join(f"{k}={v}" for k, v in row.items()))
        # what a failing step left in flight ends before the next one (tm's timers, the
        # gateway's backlog)
        time.sleep(1 if ok else 3)
        return row

    def proxy(self, name: str, proxy_cert: Cert, gw_cert: Cert, ca: Path) -> dict[str, object]:
        """One proxy's run: its rows and its results (tls_result.txt)."""
        out = self.out / name
        out.mkdir(parents=True, exist_ok=True)
        n = int(name.rsplit("-", 1)[1][1:])
        gw = GatewayProcess(out, gw_cert, self.gw_limit_s)
        proxy: harness.Proxy | ExternalProxy | None = None
        caller: tlsload.Caller | None = None
        rows: list[dict[str, object]] = []
        result: dict[str, object] = {"mode": name, "cpu_rate": self.cpu_rate}
        try:
            ds = f"1 sip:127.0.0.1:{gw.port};transport=tls 0 0 duid=gw1\n"
            tls_port = harness.free_port("tcp")
            if name.startswith("kamailio-c"):
                proxy = ExternalProxy(out / "proxy", self.kamailio_start, ds, self.alg, n)
                proxy.env.update(TLS_ADDR=f"127.0.0.1:{tls_port}", TLS_CERT=str(proxy_cert.cert),
                                 TLS_KEY=str(proxy_cert.key), TLS_CA=str(ca))
                log(f"starting {name}: {self.kamailio_start} (CHILDREN={n}, tls 127.0.0.1:{tls_port})")
            elif name.startswith("gdispatch-w"):
                proxy = harness.Proxy(out / "proxy", ds, gdispatch_config(self.gd_config, proxy_cert, ca),
                                      listen=["udp:127.0.0.1:{port}", f"tls:127.0.0.1:{tls_port}"],
                                      args=["--algorithm", self.alg, "--workers", str(n)], ready_timeout=30)
                log(f"starting {name}: " + " ".join(proxy.cmd))
            else:
                raise SystemExit(f"tlsbench.py: unknown proxy {name} (gdispatch-wN or kamailio-cN)")
            try:
                proxy.start()
            except RuntimeError as e:
                log(f"ERROR: {e}")
                result["error"] = f"did not start or answer OPTIONS; see {proxy.log_path}"
                return result
            try:
                caller = tlsload.Caller(("127.0.0.1", tls_port), ca=ca, conns=self.conns).connect()
                self.measure(name, caller, proxy, gw, rows, result)
            except (OSError, RuntimeError) as e:  # ssl.SSLError is an OSError
                log(f"ERROR: {name}: {e}")
                result["error"] = f"{type(e).__name__}: {e}"
            return result
        finally:
            if caller is not None:
                caller.close()
            if proxy is not None:
                proxy.stop()
            gw.stop()
            with open(out / "steps.tsv", "w") as f:
                f.write("\t".join(COLS) + "\n")
                f.writelines("\t".join(str(r[c]) for c in COLS) + "\n" for r in rows)
            (out / "tls_result.txt").write_text("".join(f"{k}={v}\n" for k, v in result.items()))
            if rows:
                print(f"# {name} over TLS, {self.conns} caller connections; pass: >= {self.min_pct:g} % of the "
                      f"calls completed, at >= {self.min_frac * 100:g} % of the rate offered (gen: the caller "
                      "could not offer the rate)")
                print_table(COLS, [[r[c] for c in COLS] for r in rows])
                print()

    def measure(self, name: str, caller: tlsload.Caller, proxy: harness.Proxy | ExternalProxy,
                gw: GatewayProcess, rows: list[dict[str, object]], result: dict[str, object]) -> None:
        """Warm-up, idle CPU, CPU per call at the fixed rate, then the rate search; the
        rows and the results go into `rows` and `result`."""
        pids = [proxy.pid]
        warm = caller.step(100, self.warmup, self.grace_s)
        log(f"{name}: warm-up {warm.completed}/{warm.offered} calls completed")
        if warm.completed_pct < self.min_pct:
            result["error"] = f"warm-up: {warm.completed} of {warm.offered} calls completed ({warm.statuses})"
            return
        time.sleep(1)
        # The proxy's CPU with no calls (timers, keepalive pings to the gateway): a
        # share of the CPU per call at a low rate is this, whatever the calls cost.
        i0, t0 = tree_cpu_s(pids), time.monotonic()
        time.sleep(self.idle_s)
        idle_pct = 100 * (tree_cpu_s(pids) - i0) / max(1e-3, time.monotonic() - t0)
        log(f"{name}: idle {idle_pct:.1f} % of a core; CPU per call at {self.cpu_rate} calls/s "
            f"for {self.cpu_s:g} s")
        rows.append(self.step(caller, pids, gw.pid, self.cpu_rate, self.cpu_s, "cpu"))
        best, first_fail, gen_limit = None, None, None
        for rate in self.rates:
            log(f"{name}: step {rate} calls/s x {self.step_s:g} s")
            row = self.step(caller, pids, gw.pid, rate, self.step_s, "search")
            rows.append(row)
            if row["pass"] == 0 and self.confirm:
                log(f"{name}: step {rate} failed; running it once more")
                row = self.step(caller, pids, gw.pid, rate, self.step_s, "confirm")
                rows.append(row)
            if row["pass"] == "gen":
                gen_limit = rate
                log(f"{name}: the caller offered {row['offered_cps']} of {rate} calls/s: the generator's "
                    "limit, the search stops")
                break
            if row["pass"] != 1:
                first_fail = rate
                break
            best = row
            if not proxy.alive():
                break
        cpu = rows[0]
        result.update({
            "max_cps": best["rate"] if best else 0, "first_failing_rate": first_fail or "none",
            "generator_limit": gen_limit or "none",
            "cpu_us_per_call": cpu["proxy_cpu_us_per_call"] if cpu["pass"] == 1 else "NA",
            "cpu_pct": cpu["proxy_cpu_pct"], "idle_cpu_pct": round(idle_pct, 1),
            # what the calls themselves cost: the idle CPU taken out
            "cpu_net_us_per_call": round(float(cpu["proxy_cpu_us_per_call"])
                                         - 1e4 * idle_pct * float(cpu["wall_s"]) / int(cpu["completed"]))
            if cpu["pass"] == 1 else "NA",
            "cpu_inv_p50_ms": cpu["inv_p50_ms"],
            "cpu_inv_p99_ms": cpu["inv_p99_ms"], "max_cps_cpu_us_per_call":
            best["proxy_cpu_us_per_call"] if best else "NA",
            "caller_conns": self.conns - sum(1 for c in caller.conns if c.broken),
            "gateway_conns": gw.connections, "alive": int(proxy.alive()),
        })

    def direct(self, rate: int, gw_cert: Cert, ca: Path) -> dict[str, object]:
        """The generator's check: caller straight to a gateway at `rate`."""
        out = self.out / "direct"
        gw = GatewayProcess(out, gw_cert, 60 + self.step_s + self.grace_s)
        caller = None
        try:
            caller = tlsload.Caller(("127.0.0.1", gw.port), ca=ca, conns=self.conns).connect()
            caller.step(100, self.warmup, self.grace_s)
            log(f"direct (no proxy): step {rate} calls/s x {self.step_s:g} s")
            return self.step(caller, [], gw.pid, rate, self.step_s, "direct")
        finally:
            if caller is not None:
                caller.close()
            gw.stop()


def print_table(head: list[str], rows: list[list[object]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in (head, *rows):
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


def read(path: Path) -> dict[str, str]:
    return dict(line.partition("=")[::2] for line in path.read_text().splitlines())


def ratio(a: str | None, b: str | None) -> str:
    try:
        return f"{float(a) / float(b):.2f}"
    except (TypeError, ValueError, ZeroDivisionError):
        return "NA"


def summary(out: Path) -> list[str]:
    """The table of a run (every OUT/*/tls_result.txt), gdispatch's ratios to Kamailio with
    the same number of workers, and the generator's check."""
    rows = [read(p) for p in sorted(out.glob("*/tls_result.txt"), key=lambda p: p.stat().st_mtime)]
    by_name = {r["mode"]: r for r in rows}
    rate = next((r["cpu_rate"] for r in rows if "cpu_rate" in r), "NA")
    head = ["proxy", "max_cps", "first_fail", f"cpu_us@{rate}", "vs_kam", f"cpu_%@{rate}", "idle_%",
            f"net_us@{rate}", "net_vs_kam", "INVITE->200_p50_ms", "p99_ms", "cpu_us@max", "conns_in", "conns_out",
            "note"]
    table = []
    for r in rows:
        name = r["mode"]
        kam = by_name.get("kamailio-c" + name.rsplit("-", 1)[1][1:]) if name.startswith("gdispatch-w") else None
        note = r.get("error", "-")
        if r.get("generator_limit", "none") != "none":
            note = f"caller could not offer {r['generator_limit']}/s"
        elif r.get("alive") == "0":
            note = "the proxy died"
        table.append([name, *(r.get(k, "NA") for k in ("max_cps", "first_failing_rate", "cpu_us_per_call")),
                      ratio(r.get("cpu_us_per_call"), kam.get("cpu_us_per_call")) if kam else "-",
                      r.get("cpu_pct", "NA"), r.get("idle_cpu_pct", "NA"), r.get("cpu_net_us_per_call", "NA"),
                      ratio(r.get("cpu_net_us_per_call"), kam.get("cpu_net_us_per_call")) if kam else "-",
                      *(r.get(k, "NA") for k in ("cpu_inv_p50_ms", "cpu_inv_p99_ms", "max_cps_cpu_us_per_call",
                                                  "caller_conns", "gateway_conns")), note])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    lines = [f"# SIP over TLS, connections reused ({out}): max_cps = the highest rate with >= 99 % of the calls "
             f"completed; cpu_us@{rate} = proxy CPU per call at {rate} calls/s; idle_% = its CPU with no calls, "
             f"net_us@{rate} = the CPU per call without it; vs_kam: gdispatch-wN over kamailio-cN; conns_in: the "
             "caller's connections still open at the end, conns_out: TLS connections the gateway accepted"]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in [head, *table]]
    for n in "1234":
        g, k = by_name.get(f"gdispatch-w{n}"), by_name.get(f"kamailio-c{n}")
        if g and k and "error" not in g and "error" not in k:
            lines.append(f"gdispatch/kamailio over TLS with {n} worker(s): calls/s {ratio(g['max_cps'], k['max_cps'])}"
                         f", CPU per call at {rate} calls/s "
                         f"{ratio(g.get('cpu_us_per_call'), k.get('cpu_us_per_call'))}, without the idle CPU "
                         f"{ratio(g.get('cpu_net_us_per_call'), k.get('cpu_net_us_per_call'))}")
    why = out / "kamailio_skipped.txt"
    if why.exists():
        lines.append(f"Kamailio not measured: {why.read_text().strip()}")
    direct = out / "direct" / "direct.txt"
    if direct.exists():
        lines.append(direct.read_text().strip())
    return lines


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if len(sys.argv) == 3 and sys.argv[1] == "--summary":
        print("\n".join(summary(Path(sys.argv[2]))))
        return 0
    out = Path(env("OUT", str(ROOT / "bench-results" / time.strftime("tls_%Y%m%d_%H%M%S")))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not shutil.which("openssl"):
        print("tlsbench.py: openssl is needed to make the bench's certificates (apt-get install -y openssl)",
              file=sys.stderr)
        return 1
    run = Run(out)
    wanted = env("TLS_PROXIES", "").split()
    proxies, why = default_proxies()
    if wanted:
        missing = kamailio_tls_missing() if any(p.startswith("kamailio") for p in wanted) else None
        proxies = [p for p in wanted if not (missing and p.startswith("kamailio"))]
        why = missing
    if why:
        log(f"Kamailio over TLS not measured: {why}")
        (out / "kamailio_skipped.txt").write_text(why + "\n")
    pki = Pki(out / "pki", name="gdispatch bench CA")
    proxy_cert = pki.cert("proxy", "proxy.bench", ips=("127.0.0.1",))
    gw_cert = pki.cert("gateway", "gateway.bench", ips=("127.0.0.1",))
    status = 0
    results = []
    for name in proxies:
        res = run.proxy(name, proxy_cert, gw_cert, pki.ca)
        results.append(res)
        if "error" in res:
            log(f"{name}: {res['error']}")
            status = 1
    stepped = [int(r["first_failing_rate"]) if str(r.get("first_failing_rate", "none")).isdigit()
               else int(r.get("max_cps") or 0) for r in results]
    if env("TLS_DIRECT", "1") == "1" and any(stepped):
        rate = max(stepped)
        row = run.direct(rate, gw_cert, pki.ca)
        verdict = ("it could carry every rate measured" if row["pass"] == 1 else
                   "it is the bottleneck at that rate: figures at or above it are the generator's")
        (out / "direct" / "direct.txt").write_text(
            f"generator check, no proxy: {rate} calls/s offered at {row['offered_cps']}/s, "
            f"{row['completed_pct']} % completed at {row['completed_cps']}/s "
            f"(caller {row['caller_cpu_pct']} %, gateway {row['gw_cpu_pct']} % of a core): {verdict}\n")
    lines = summary(out)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    if env("TLS_SUMMARY", "1") == "1":
        print("\n".join(lines))
    first = next((r for r in results if str(r["mode"]).startswith("gdispatch") and "error" not in r), None)
    if first:
        print(f"tls_max_cps={first['max_cps']}")
        print(f"tls_cpu_us_per_call={first['cpu_us_per_call']}")
    print(f"results: {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
