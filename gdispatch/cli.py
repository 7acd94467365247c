"""The ``gdispatch`` command line.

``gdispatch run`` starts the proxy; flags override the TOML configuration file.
"""

from __future__ import annotations

import argparse
import sys

from gdispatch import __version__
from gdispatch.config import ConfigError, load, with_overrides


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gdispatch",
        description="A SIP load-balancing proxy that reads Kamailio's dispatcher.list.",
    )
    p.add_argument("--version", action="version", version=f"gdispatch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run", help="run the proxy in the foreground",
        description="Run the proxy in the foreground. Command-line flags override the configuration file.",
    )
    run.add_argument("--config", metavar="FILE",
                     help="TOML configuration file (default: built-in defaults, see gdispatch.toml)")
    run.add_argument("--listen", metavar="PROTO:IP:PORT", action="append",
                     help="listen address, e.g. udp:127.0.0.1:5060 or tcp:[::1]:5060; repeat for several "
                          "(replaces [server].listen)")
    run.add_argument("--list", metavar="FILE", dest="list_file",
                     help="dispatcher.list file in Kamailio's format (replaces [dispatcher].list_file)")
    run.add_argument("--set", metavar="N", type=int, dest="set_id",
                     help="destination set the routes dispatch to (replaces [[route]].set)")
    run.add_argument("--algorithm", metavar="N", type=int,
                     help="Kamailio selection algorithm number: 0 hash Call-ID, 4 round robin, 6 random, "
                          "8 priority, 9 weight (replaces [[route]].algorithm)")
    run.add_argument("--workers", metavar="N", type=int, help="number of worker processes")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                     help="replaces [server].log_level")
    lst = sub.add_parser("list", help="work with dispatcher.list files",
                         description="Work with dispatcher.list files (Kamailio's format).")
    lsub = lst.add_subparsers(dest="list_command", metavar="ACTION")
    check = lsub.add_parser("check", help="validate a list file without running the proxy",
                            description="Validate a dispatcher.list file. Exit status 0 when it loads, "
                                        "1 with one line per problem (file:line: what) when it does not.")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--quiet", "-q", action="store_true", help="print nothing when the file is good")
    return p


def list_check(path: str, quiet: bool = False) -> int:
    from gdispatch.dispatcher.listfile import ListError, load_list

    try:
        dlist = load_list(path)
    except ListError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        n = len(e.problems)
        print(f"{path}: {n} problem{'s' if n != 1 else ''}; the file would not load", file=sys.stderr)
        return 1
    if not quiet:
        nsets = len(dlist.sets)
        ndest = sum(len(s.destinations) for s in dlist.sets.values())
        print(f"{path}: OK, {nsets} set{'s' if nsets != 1 else ''}, {ndest} destination{'s' if ndest != 1 else ''}")
        for setid in sorted(dlist.sets):
            for d in dlist.sets[setid].destinations:
                print(f"  set {setid}  {d.uri}  flags={d.flags} priority={d.priority}"
                      + (f"  attrs={d.attrs}" if d.attrs else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        if args.list_command == "check":
            return list_check(args.file, args.quiet)
        parser.parse_args(["list", "--help"])
        return 2
    if args.command != "run":
        parser.print_help(sys.stderr)
        return 2
    try:
        cfg = load(args.config)
        cfg = with_overrides(cfg, listen=args.listen, list_file=args.list_file, set_id=args.set_id,
                             algorithm=args.algorithm, workers=args.workers)
    except ConfigError as e:
        print(f"gdispatch: configuration error: {e}", file=sys.stderr)
        return 2
    if args.log_level:
        from dataclasses import replace

        cfg = replace(cfg, log_level=args.log_level)
    from gdispatch.app import run as run_proxy

    return run_proxy(cfg)


if __name__ == "__main__":
    sys.exit(main())
