"""gdispatch's maximum sustainable call rate, on 127.0.0.1. Run through bench/bench.sh.

Starts 2 SIPp UAS (bench/scenarios/uas_shapes.xml: tests/scenarios/uas_ok.xml that also
copies compact Vias) and gdispatch in front of them (round robin, ``--algorithm 4``), waits
for the proxy's OPTIONS 200, measures unloaded latency with bench/lib/probe.py, then, for
each caller shape in SHAPES, runs one bounded SIPp UAC load per rate in RATES (full calls:
INVITE, 200, ACK, BYE, 200; the shape's scenario, see SHAPE_SCENARIOS). A step passes when
failed plus unfinished calls are < MAX_FAIL_PCT % of the calls, UAC retransmissions <=
MAX_RETRANS_PCT % of the calls, and the achieved rate (successful calls / elapsed time) >=
MIN_RATE_FRAC x the target. A failing step is run once more (CONFIRM=1) before the search
of that shape stops. The shapes share the proxy and the gateways, one after another.

Proxy CPU is utime+stime of the proxy and all its descendants, from /proc, over the step;
divided by the successful calls it gives the proxy's CPU cost of one call.

DIRECT=1: no proxy, the UAC calls one UAS (the ceiling of this harness on this machine).

PROXY_CMD: another proxy instead of gdispatch (Kamailio, for the side-by-side run of
bench.sh), started as ``bash -c "exec $PROXY_CMD"`` with PROXY_ADDR (127.0.0.1:PORT),
DS_LIST, DS_ALG, CHILDREN and RUN_DIR in its environment; ready once it answers OPTIONS
with 200; stopped with SIGTERM by PID (SIGKILL for its process tree 5 s later).

result.txt: max_cps, proxy_cpu_us_per_call, first_failing_rate and the overload step are
those of the first shape (the figures bench.sh ends with); each shape has its own
shape_<name>_max_cps, shape_<name>_first_failing_rate, shape_<name>_cpu_us_per_call (at
its max_cps), shape_<name>_cpu_us_at_<rate> for every rate it passed and
shape_<name>_cpu_us_failed_at_<rate> for the one it failed at.

The latency probe runs twice: straight to the first gateway, then through the proxy; the
difference of the medians is the latency the proxy adds (`idle_added_*`).

Environment: PY (set by bench.sh), NAME, SHAPES ("own"; names of SHAPE_SCENARIOS, or
scenario files), GD_PYTHONPATH (gdispatch from another checkout), RATES, STEP_S, LAT_CALLS, LAT_RATE,
LAT_BYE_AFTER_MS (the probe's pause between ACK and BYE, 0), ALG, PROXY_ARGS,
PROXY_CMD, CHILDREN, OVERLOAD_X (after the search, one step at OVERLOAD_X times the
highest passing rate: the calls completed per second past capacity),
DEST_ATTRS (more attrs for each gateway's dispatcher.list line, e.g. "prefix=011"),
PROBE_DESTS (extra destinations to ping, 0), PROBE_INTERVAL (1 s),
GRACE_S, CONFIRM, MAX_FAIL_PCT, MAX_RETRANS_PCT, MIN_RATE_FRAC, DIRECT, OUT.
"""

from __future__ import annotations

import math
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import probe  # noqa: E402 - found through the sys.path set above

from tests.e2e import harness  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


# SIPp's sockets get 4 MB buffers (as the proxies' own have), for every proxy alike. With
# the 208 KB default the caller's socket overflowed at 4,000 calls/s (1,062 datagrams
# dropped in one step, counted by the kernel in /proc/net/udp), and the lost 200s came
# back as BYE retransmissions charged to the proxy under test.
SIPP_BUFFERS = ("-buff_size", str(4 * 1024 * 1024))

# The callers' shapes: how each writes the same dialog (see the comment at the top of each
# scenario). "own" is the project's UAC, tests/scenarios/uac.xml.
SHAPE_SCENARIOS = {
    "own": "uac.xml",
    "builtin": "uac_sipp_builtin.xml",
    "compact": "uac_compact.xml",
    "phone": "uac_phone.xml",
}
# The gateways answer every shape: uas_ok.xml, also copying Vias written as v:.
GATEWAY_SCENARIO = str(ROOT / "bench" / "scenarios" / "uas_shapes.xml")


def shape_scenario(shape: str) -> tuple[str, str]:
    """(name, scenario) of a SHAPES entry: a name of SHAPE_SCENARIOS, or a scenario file
    (tests/scenarios/uac_NAME.xml, or a path) named after its file."""
    if shape in SHAPE_SCENARIOS:
        return shape, SHAPE_SCENARIOS[shape]
    if shape.endswith(".xml"):
        name = Path(shape).stem
        return (name[4:] if name.startswith("uac_") else name), shape
    raise SystemExit(f"maxcps.py: unknown shape {shape!r} (one of {' '.join(SHAPE_SCENARIOS)}, or a .xml file)")


def env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def python_build() -> str:
    """The interpreter gdispatch runs on (sys.executable: the harness starts the proxy with
    it): its version, path (and the executable the path leads to), and whether the
    interpreter is in a shared libpython (built with --enable-shared), which without
    -fno-semantic-interposition calls its own functions through the library's indirection."""
    exe = sys.executable
    real = os.path.realpath(exe)
    if real != exe:
        exe = f"{exe} -> {real}"
    try:
        with open("/proc/self/maps") as maps:
            shared = any("libpython" in line for line in maps)
    except OSError:
        shared = False
    return f"{sys.version.split()[0]} {exe}{' (libpython shared)' if shared else ''}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tree_cpu_s(pids: list[int]) -> float:
    """utime+stime (seconds) of pids and all their live descendants."""
    procs: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        procs[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    members = {p for p in pids if p in procs}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return sum(procs[p][1] for p in members) / HZ


def box_busy_s() -> float:
    """Busy CPU seconds of the whole machine, all cores (from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / HZ


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def elapsed_s(stat: dict[str, str]) -> float:
    """SIPp's ElapsedTime(C), "HH:MM:SS:uuuuuu", in seconds."""
    p = stat.get("ElapsedTime(C)", "").split(":")
    if len(p) < 3:
        return float("nan")
    return int(p[0]) * 3600 + int(p[1]) * 60 + int(p[2]) + (int(p[3]) / 1e6 if len(p) > 3 else 0.0)


COLS = ["shape", "rate", "calls", "ok", "failed", "unfinished", "fail_pct", "retrans_pct", "achieved_cps",
        "proxy_cpu_pct", "proxy_cpu_us_per_call", "uas_cpu_pct", "uac_cpu_pct", "box_cpu_pct", "pass", "kind"]


class ExternalProxy:
    """A proxy other than gdispatch, under the same contract as the side-by-side harness."""

    def __init__(self, workdir: Path, cmd: str, dispatcher_list: str, alg: str, children: int):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = harness.free_port("both")
        self.cmd = cmd
        self.log_path = workdir / "proxy.log"
        (workdir / "dispatcher.list").write_text(dispatcher_list)
        self.env = dict(os.environ, PROXY_ADDR=f"127.0.0.1:{self.port}", DS_LIST=str(workdir / "dispatcher.list"),
                        DS_ALG=alg, CHILDREN=str(children), RUN_DIR=str(workdir))
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> ExternalProxy:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(["bash", "-c", "exec " + self.cmd], env=self.env, stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd} exited with {self.proc.returncode}; see {self.log_path}")
            if harness.sip_options(self.port, timeout=0.3) == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.cmd} did not answer OPTIONS with 200 in 30 s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            harness._stop_process(self.proc, signal.SIGTERM, 5.0)


def latency(target: str, gateway: str | None, calls: int, rate: float, bye_after: float) -> dict[str, object]:
    """Unloaded latency through `target` and, when `gateway` is given, straight to that
    gateway (no proxy) just before, so that what the proxy adds comes from one minute of
    the same run: `added_inv_p50_us` and `added_bye_p50_us` (through minus direct)."""
    if calls <= 0:
        return {}
    lat: dict[str, object] = {}
    if gateway is not None:
        direct = probe.measure(gateway, calls, rate, bye_after)
        log("unloaded latency, no proxy: " + " ".join(f"{k}={v}" for k, v in direct.items()))
        lat.update({f"direct_{k}": v for k, v in direct.items()})
    through = probe.measure(target, calls, rate, bye_after)
    log("unloaded latency: " + " ".join(f"{k}={v}" for k, v in through.items()))
    lat.update(through)
    for kind in ("inv", "bye"):
        a, b = lat.get(f"{kind}_p50_us"), lat.get(f"direct_{kind}_p50_us")
        if isinstance(a, int) and isinstance(b, int):
            lat[f"added_{kind}_p50_us"] = a - b
    return lat


def main() -> int:
    # SIGTERM ends the run like Ctrl-C does: through the finally below, which stops by PID
    # every process started here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    direct = env("DIRECT", "0") == "1"
    rates = [int(r) for r in env("RATES", "250 500 1000 1500 2000 2500 3000").split()]
    step_s = float(env("STEP_S", "5"))
    grace_s = float(env("GRACE_S", "20"))
    lat_calls = int(env("LAT_CALLS", "300"))
    lat_rate = float(env("LAT_RATE", "50"))
    alg = env("ALG", "4")
    proxy_args = shlex.split(os.environ.get("PROXY_ARGS", ""))
    confirm = env("CONFIRM", "1") == "1"
    max_fail = float(env("MAX_FAIL_PCT", "0.1"))
    max_retrans = float(env("MAX_RETRANS_PCT", "1.0"))
    min_frac = float(env("MIN_RATE_FRAC", "0.95"))
    stamp = time.strftime("bench_%Y%m%d_%H%M%S") + ("_direct" if direct else "")
    out = Path(env("OUT", str(ROOT / "bench-results" / stamp))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shapes = [shape_scenario(x) for x in env("SHAPES", "own").split()]
    shape_pause_s = float(env("SHAPE_PAUSE_S", "3"))
    gd_pythonpath = os.environ.get("GD_PYTHONPATH", "").strip()
    harness.require_sipp()
    # every UAS exits by itself once the whole run should be over
    uas_limit = (120 + 2 * lat_calls / lat_rate
                 + len(shapes) * (2 * len(rates) * (step_s + grace_s + 20) + shape_pause_s))

    gateways: list[harness.Uas] = []
    proxy: harness.Proxy | ExternalProxy | None = None
    external = os.environ.get("PROXY_CMD", "").strip()
    name = env("NAME", "direct" if direct else ("proxy" if external else "gdispatch"))
    try:
        for i in range(1 if direct else 2):
            gateways.append(harness.Uas(out, GATEWAY_SCENARIO, time_limit_s=uas_limit, name=f"uas{i + 1}",
                                        extra_args=SIPP_BUFFERS).start())
        log("UAS on " + ", ".join(f"127.0.0.1:{g.port} (pid {g.pid})" for g in gateways))
        if direct:
            target = f"127.0.0.1:{gateways[0].port}"
            mode = "direct (UAC -> UAS, no proxy)"
        else:
            # DEST_ATTRS: e.g. "prefix=011", to measure a plugin that reads the attrs (tech_prefix)
            dest_attrs = env("DEST_ATTRS", "")
            ds = harness.dispatcher_list(*gateways, attrs=[f"duid=gw{i + 1}" + (f";{dest_attrs}" if dest_attrs else "")
                                                           for i in range(len(gateways))])
            probe_dests = int(env("PROBE_DESTS", "0"))
            config = None
            if probe_dests:
                # Keepalive load beside the calls: PROBE_DESTS more destinations (set 2, never
                # dispatched to) pinged every PROBE_INTERVAL seconds; the gateways answer.
                ds += "".join(f"2 {gateways[i % len(gateways)].uri} 0 0 duid=probe{i}\n" for i in range(probe_dests))
                config = f"[probing]\ninterval = {float(env('PROBE_INTERVAL', '1'))}\n"
                log(f"{probe_dests} extra destinations pinged every {env('PROBE_INTERVAL', '1')} s")
            if external:
                proxy = ExternalProxy(out / "proxy", external, ds, alg, int(env("CHILDREN", "1")))
                log(f"starting {name}: {external} (CHILDREN={env('CHILDREN', '1')})")
            else:
                # GD_PYTHONPATH: another checkout's gdispatch in this venv (bench.sh's base-wN),
                # which is only read: no bytecode cache is written into it.
                proxy = harness.Proxy(out / "proxy", ds, config=config, listen=["udp:127.0.0.1:{port}"],
                                      args=["--algorithm", alg, *proxy_args], ready_timeout=30,
                                      env={"PYTHONPATH": gd_pythonpath, "PYTHONDONTWRITEBYTECODE": "1"}
                                      if gd_pythonpath else None)
                log(f"starting {name}: " + " ".join(proxy.cmd)
                    + (f" (PYTHONPATH={gd_pythonpath})" if gd_pythonpath else ""))
                # How the interpreter was built changes the CPU per call: record which one ran.
                log(f"python: {python_build()}")
            try:
                proxy.start()
            except RuntimeError as e:
                log(f"ERROR: {e}")
                print(f"ERROR: {name} did not start or did not answer OPTIONS with 200; "
                      f"see {proxy.log_path}", file=sys.stderr)
                return 1
            target = f"127.0.0.1:{proxy.port}"
            mode = f"{name} (pid {proxy.pid}) -> {len(gateways)} UAS, algorithm {alg}"
        log(f"mode: {mode}; target {target}")

        lat = latency(target, f"127.0.0.1:{gateways[0].port}" if proxy else None, lat_calls, lat_rate,
                      float(env("LAT_BYE_AFTER_MS", "0")) / 1000)
        if lat:
            (out / "latency.txt").write_text("".join(f"{k}={v}\n" for k, v in lat.items()))

        rows: list[dict[str, object]] = []
        uas_pids = [g.pid for g in gateways]

        def step(shape: str, scenario: str, rate: int, kind: str) -> bool:
            calls = max(1, int(rate * step_s))
            log(f"{shape}: step {rate} cps x {step_s:g} s = {calls} calls")
            p0 = tree_cpu_s([proxy.pid]) if proxy else 0.0
            u0, c0, b0, w0 = tree_cpu_s(uas_pids), children_cpu_s(), box_busy_s(), time.monotonic()
            res = harness.run_uac(target, scenario, calls=calls, rate=rate, timeout_s=step_s + grace_s,
                                  workdir=out / f"step_{shape}_{rate}_{int(time.time())}", extra_args=SIPP_BUFFERS)
            wall = max(1e-3, time.monotonic() - w0)
            p1 = tree_cpu_s([proxy.pid]) if proxy else 0.0
            u1, c1, b1 = tree_cpu_s(uas_pids), children_cpu_s(), box_busy_s()
            el = elapsed_s(res.stat)
            achieved = res.successful / el if el > 0 and not math.isnan(el) else 0.0
            fail_pct = 100.0 * (res.failed + res.unfinished) / calls
            retrans_pct = 100.0 * res.retransmissions / calls
            ok = (fail_pct < max_fail and retrans_pct <= max_retrans and achieved >= min_frac * rate)
            if proxy and not proxy.alive():
                log("the proxy died")
                ok = False
            row = {
                "shape": shape, "rate": rate, "calls": calls, "ok": res.successful, "failed": res.failed,
                "unfinished": res.unfinished, "fail_pct": round(fail_pct, 3),
                "retrans_pct": round(retrans_pct, 3), "achieved_cps": round(achieved, 1),
                "proxy_cpu_pct": round(100 * (p1 - p0) / wall, 1) if proxy else "NA",
                "proxy_cpu_us_per_call": round(1e6 * (p1 - p0) / res.successful)
                if proxy and res.successful else "NA",
                "uas_cpu_pct": round(100 * (u1 - u0) / wall, 1),
                "uac_cpu_pct": round(100 * (c1 - c0) / wall, 1),
                "box_cpu_pct": round(100 * (b1 - b0) / wall, 1),
                "pass": int(ok), "kind": kind,
            }
            rows.append(row)
            log(" ".join(f"{k}={v}" for k, v in row.items()))
            time.sleep(1)  # let the UAS finish their timewait of the last calls
            return ok

        def search(shape: str, scenario: str) -> tuple[dict[str, object] | None, int | None]:
            """The last passing step of the rate search, and the first failing rate."""
            best = None
            for rate in rates:
                passed = step(shape, scenario, rate, "search")
                if not passed and confirm:
                    log(f"{shape}: step {rate} failed; running it once more")
                    passed = step(shape, scenario, rate, "confirm")
                if not passed:
                    return best, rate
                best = rows[-1]
            return best, None

        per_shape: dict[str, object] = {}
        best: dict[str, object] | None = None
        first_fail = None
        overload = None
        factor = float(env("OVERLOAD_X", "0"))
        for i, (shape, scenario) in enumerate(shapes):
            if i:
                time.sleep(shape_pause_s)  # the last shape's transactions end (wt_timer)
            log(f"shape {shape}: {scenario}")
            shape_best, shape_fail = search(shape, scenario)
            per_shape[f"shape_{shape}_max_cps"] = shape_best["rate"] if shape_best else 0
            per_shape[f"shape_{shape}_first_failing_rate"] = shape_fail or "none"
            per_shape[f"shape_{shape}_cpu_us_per_call"] = shape_best["proxy_cpu_us_per_call"] if shape_best else "NA"
            for r in rows:
                if r["shape"] == shape and r["kind"] != "overload":
                    # a failing step's figure is kept apart: calls that failed cost too
                    key = "cpu_us_at" if r["pass"] else "cpu_us_failed_at"
                    per_shape[f"shape_{shape}_{key}_{r['rate']}"] = r["proxy_cpu_us_per_call"]
            if i == 0:
                best, first_fail = shape_best, shape_fail
                if factor > 0 and best is not None and proxy is not None:
                    # Past capacity: does the proxy keep carrying calls, or collapse?
                    time.sleep(2)
                    log(f"{shape}: overload step: {factor:g} x {best['rate']} cps")
                    step(shape, scenario, int(factor * int(best["rate"])), "overload")
                    overload = rows[-1]

        with open(out / "steps.tsv", "w") as f:
            f.write("\t".join(COLS) + "\n")
            f.writelines("\t".join(str(r[c]) for c in COLS) + "\n" for r in rows)
        widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLS} if rows else {}
        print(f"# {mode}; {step_s:g} s steps; pass: failed+unfinished < {max_fail:g} %, "
              f"retransmissions <= {max_retrans:g} %, achieved >= {min_frac * 100:g} % of the target")
        if lat:
            print("# unloaded latency (us): INVITE->200 p50 {inv_p50_us} p99 {inv_p99_us}; "
                  "BYE->200 p50 {bye_p50_us} p99 {bye_p99_us} ({lat_n} calls, {lat_fail} failed)".format(**lat))
            if "added_bye_p50_us" in lat:
                print("# added by the proxy (p50 through it minus p50 without it, us): INVITE->200 "
                      "{added_inv_p50_us}, BYE->200 {added_bye_p50_us}".format(**lat))
        print("  ".join(c.rjust(widths[c]) for c in COLS))
        for r in rows:
            print("  ".join(str(r[c]).rjust(widths[c]) for c in COLS))
        max_cps = best["rate"] if best else 0
        cpu = best["proxy_cpu_us_per_call"] if best else "NA"
        result = {"mode": "direct" if direct else name, "max_cps": max_cps,
                  "first_failing_rate": first_fail or "none", "proxy_cpu_us_per_call": cpu,
                  "step_s": step_s, "rates": " ".join(map(str, rates)), "out": out,
                  "shapes": " ".join(n for n, _ in shapes), "code": gd_pythonpath or ("NA" if external else ROOT),
                  "python": "NA" if external or direct else python_build()}
        result.update({f"idle_{k}": v for k, v in lat.items()})
        result.update(per_shape)
        if overload is not None:
            # achieved_cps divides by SIPp's elapsed time, which past capacity includes the
            # wait of the calls turned away (the scenario's receive timeout after a 503):
            # ok_per_s divides by the seconds the load was offered.
            result.update({"overload_rate": overload["rate"], "overload_ok_cps": overload["achieved_cps"],
                           "overload_ok_per_s": round(overload["ok"] / step_s, 1),
                           "overload_fail_pct": overload["fail_pct"], "overload_retrans_pct": overload["retrans_pct"]})
        (out / "result.txt").write_text("".join(f"{k}={v}\n" for k, v in result.items()))
        for shape, _ in shapes:
            print(f"# shape {shape}: max_cps {per_shape[f'shape_{shape}_max_cps']}, first failing "
                  f"{per_shape[f'shape_{shape}_first_failing_rate']}, proxy CPU us per call there "
                  f"{per_shape[f'shape_{shape}_cpu_us_per_call']}")
        print(f"results: {out}")
        print(f"max_cps={max_cps}")
        print(f"proxy_cpu_us_per_call={cpu}")
        return 0
    finally:
        if proxy:
            proxy.stop()
        for g in gateways:
            g.stop()


if __name__ == "__main__":
    sys.exit(main())
