"""The ``gdispatch`` command line.

``gdispatch run`` starts the proxy; flags override the TOML configuration file.
``gdispatch rpc`` calls a control command of the running proxy, as kamcmd does for
Kamailio. ``gdispatch list check|show|add|rm`` read and edit a dispatcher.list file, as
kamctl's dispatcher commands do for Kamailio's database table. ``gdispatch plugins`` lists
the plugins a configuration loads and the hooks each implements. ``gdispatch key`` shows
and rotates the keys that sign the proxy's Record-Route (gdispatch.recordroute).
"""

from __future__ import annotations

import argparse
import os
import sys

from gdispatch import __version__
from gdispatch.config import Config, ConfigError, load, with_overrides


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
    run.add_argument("--log-format", choices=("text", "json"),
                     help="json: one JSON object per line (replaces [server].log_format)")
    lst = sub.add_parser("list", help="work with dispatcher.list files",
                         description="Work with dispatcher.list files (Kamailio's format).")
    lsub = lst.add_subparsers(dest="list_command", metavar="ACTION")
    check = lsub.add_parser("check", help="validate a list file without running the proxy",
                            description="Validate a dispatcher.list file. Exit status 0 when it loads, "
                                        "1 with one line per problem (file:line: what) when it does not. "
                                        "With --config, the list is checked as that configuration's proxy "
                                        "would load it: its [dispatcher] load_mode; every [[route]]'s set in "
                                        "the list; every destination's name resolved (with its [dns] "
                                        "nameservers) and reachable from a [server].listen address (a UDP "
                                        "destination needs a UDP listen address of its address family); "
                                        "every socket, sockname and ping_socket attr a listen address. "
                                        "A destination that fails that would get no call: it counts as a "
                                        "problem too.")
    check.add_argument("file", metavar="FILE", nargs="?", help="the list file (default: list_file of --config)")
    check.add_argument("--config", metavar="FILE", help="the proxy's configuration file (see above)")
    check.add_argument("--quiet", "-q", action="store_true", help="print nothing when the file is good")
    show = lsub.add_parser("show", help="print the destinations of a list file",
                           description="Print the destinations of a dispatcher.list file as a table, in file order. "
                                       "Exit status 1 when a line is bad (listed on stderr).")
    show.add_argument("file", metavar="FILE", nargs="?", help="the list file (as --list FILE)")
    _list_file_args(show)
    add = lsub.add_parser("add", help="add a destination to a list file (like kamctl dispatcher add)",
                          description="Add a destination line to a dispatcher.list file, after the last line of "
                                      "its set. The file is replaced atomically and only if it still loads; "
                                      "comments and other lines are kept as they are. Exit status 0 when added, "
                                      "1 otherwise. Example: gdispatch list add 1 sip:mg3:5060 0 0 '' "
                                      "'Media Gateway 3'")
    add.add_argument("setid", metavar="SETID", type=_whole_number)
    add.add_argument("uri", metavar="URI")
    add.add_argument("flags", metavar="FLAGS", nargs="?", type=_whole_number, default=0,
                     help="flag bits: 1 inactive, 2 trying, 4 disabled, 8 probing, 16 no DNS, 32 no ping "
                          "(default 0)")
    add.add_argument("priority", metavar="PRIORITY", nargs="?", type=_whole_number, default=0,
                     help="higher goes first (default 0)")
    add.add_argument("attrs", metavar="ATTRS", nargs="?", default="",
                     help="name=value;... e.g. duid=mg3;weight=50 ('' for none)")
    add.add_argument("description", metavar="DESCRIPTION", nargs="*",
                     help="free text, written as a '# ...' comment at the end of the line")
    _list_file_args(add)
    rm = lsub.add_parser("rm", help="remove a destination from a list file",
                         description="Remove every line of set SETID with this URI from a dispatcher.list file "
                                     "(atomically; the other lines are kept as they are). Exit status 0 when "
                                     "removed, 1 otherwise.")
    rm.add_argument("setid", metavar="SETID", type=_whole_number)
    rm.add_argument("uri", metavar="URI")
    _list_file_args(rm)

    plugins = sub.add_parser(
        "plugins", help="list the plugins a configuration loads and the hooks each implements",
        description="Load the plugins as gdispatch run would (the built-in behaviour, the files of [plugins] "
                    "enabled from hooks_dir or else shipped with gdispatch, the packages installed under the "
                    "gdispatch entry-point group) "
                    "and print each with where it comes from and the hooks it implements, then the order "
                    "in which each hook calls them. Exit status 0 when every plugin loads, 1 with the "
                    "plugin's name and the error when one does not, 2 for a configuration error.")
    plugins.add_argument("--config", metavar="FILE",
                         help="TOML configuration file (default: built-in defaults: no plugin file enabled)")
    key = sub.add_parser(
        "key", help="show or add the keys that sign the proxy's Record-Route",
        description="The key file holds the keys that sign the Record-Route of new dialogs, one per line "
                    "(KEY_ID SECRET): the first signs, every one verifies. 'show' prints the file's place and "
                    "its key ids (never the secrets); 'add' puts a new key first (creating the file, mode 0600, "
                    "if missing). A running proxy takes the change on SIGHUP or dispatcher.reload; remove the "
                    "old key's line once the calls it signed are over. Exit status 0, or 1 with the reason.")
    key.add_argument("action", choices=("show", "add"))
    key.add_argument("--config", metavar="FILE", help="take [security].key_file from this configuration file")
    rpc = sub.add_parser(
        "rpc", help="call a control command of the running proxy (like kamcmd)",
        description="Call a control command of the running proxy and print the answer as kamcmd does. "
                    "Kamailio's names and arguments: dispatcher.list [short|full|extended], dispatcher.reload, "
                    "dispatcher.set_state STATE GROUP ADDRESS|idx=N|duid=NAME|all, dispatcher.set_duid_state STATE "
                    "GROUP DUID|all, dispatcher.ping_active [0|1], dispatcher.add GROUP ADDRESS [FLAGS [PRIORITY "
                    "[ATTRS [DESCRIPTION [PERSIST]]]]], dispatcher.remove GROUP ADDRESS [PERSIST], dispatcher.hash "
                    "NSLOTS VAL1 [VAL2], core.version, core.uptime, stats, system.listMethods. Arguments that are "
                    "whole numbers are sent as numbers; prefix s: to send text, i: to send a number. A failed "
                    "command prints 'error: CODE - MESSAGE' on stdout and exits 0, as kamcmd does (gdispatch's "
                    "details on stderr); with --json it prints the error object and exits 1. Exit status 2: no "
                    "control socket answered, or no answer came.",
        epilog="The socket: --socket PATH, else $GDISPATCH_SOCKET, else the first of $RUNTIME_DIRECTORY/control.sock, "
               "/run/gdispatch/control.sock, /tmp/gdispatch-$UID/control.sock that answers (where gdispatch run "
               "puts it by default). Put options before METHOD or after all ARGS.")
    rpc.add_argument("method", metavar="METHOD")
    rpc.add_argument("args", metavar="ARGS", nargs="*")
    rpc.add_argument("--json", action="store_true",
                     help="print the result (or the error object, exit status 1) as JSON")
    rpc.add_argument("--socket", metavar="PATH", help="the control socket (default: see below)")
    rpc.add_argument("--tcp", metavar="HOST:PORT", help="use the TCP control port instead of the socket")
    rpc.add_argument("--token-file", metavar="FILE",
                     help="file holding the TCP port's token (default: $GDISPATCH_RPC_TOKEN)")
    rpc.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0, help="wait this long for the answer")
    return p


def _whole_number(text: str) -> int:
    try:
        value = int(text, 16) if text[:2].lower() == "0x" else int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _list_file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", metavar="FILE", dest="list_file",
                   help="the list file (default: list_file of --config, else ./dispatcher.list)")
    p.add_argument("--config", metavar="FILE", help="take the list file from this configuration file")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def list_check(path: str | None, quiet: bool = False, config: str | None = None) -> int:
    from gdispatch.dispatcher.listfile import ListError, load_list
    from gdispatch.dispatcher.sockets import SocketTable

    cfg = None
    if config is not None:
        cfg = _load_config(config)
        if cfg is None:
            return 2
        path = path or cfg.list_file
    if path is None:
        print("gdispatch list check: give the list FILE, or --config FILE to take its list_file", file=sys.stderr)
        return 2
    try:
        if cfg is None:
            dlist = load_list(path)
        else:
            dlist = load_list(path, mode=cfg.load_mode, kamailio_order=cfg.kamailio_order,
                              sockets=SocketTable(cfg.listen))
    except ListError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {_plural(len(e.problems), 'problem')}; the file would not load", file=sys.stderr)
        return 1
    if cfg is not None:
        problems = _check_as_loaded(cfg, dlist)
        if problems:
            for problem in problems:
                print(problem, file=sys.stderr)
            print(f"{path}: {_plural(len(problems), 'problem')} with {config}", file=sys.stderr)
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


def _check_as_loaded(cfg: Config, dlist) -> list[str]:
    """What the proxy of `cfg` would refuse in `dlist` or leave unused: the lines its
    load_mode skips, the [[route]] sets missing (it would not start or reload), the
    destinations it could not send to (shown IX, no call)."""
    import logging

    from gdispatch.dns import DestinationResolver, Resolver
    from gdispatch.net import TlsContexts, TlsSetupError, reach_problem
    from gdispatch.net.tls import profile_problem
    from gdispatch.proxy.routing import missing_sets

    problems = [f"{p} (skipped: [dispatcher].load_mode = \"skip\")" for p in dlist.problems]
    missing = missing_sets(cfg.routes, dlist)
    if missing:
        problems += [f"{p}; the proxy would not start or reload with this list" for p in missing]
    resolver = DestinationResolver(Resolver(list(cfg.dns_nameservers) or None),
                                   refresh_interval=cfg.dns_refresh, retry_interval=cfg.dns_retry)
    dns_log = logging.getLogger("gdispatch.dns")
    level = dns_log.level
    dns_log.setLevel(logging.ERROR)  # each one is printed below, once
    try:
        resolver.resolve_all(dlist, lambda dest, ip: (
            profile_problem(cfg.tls, dest.transport, dest.attr_map.get("tls_profile", ""))
            or reach_problem(cfg.listen, dest.transport, ip)))
    finally:
        dns_log.setLevel(level)
        resolver.stop()
    unusable = [d for d in dlist.destinations() if not d.usable]
    unusable.sort(key=lambda d: int(d.where.rpartition(":")[2] or 0))  # in file order, not try order
    problems += [f"{d.where}: {d.uri} (set {d.setid}) is not usable, it would get no call (IX): "
                 f"{d.unusable or 'no address'}" for d in unusable]
    try:
        TlsContexts(cfg.tls, server=any(x.transport == "tls" for x in cfg.listen))
    except TlsSetupError as e:
        problems.append(f"{e}; the proxy would not start")
    return problems


def _list_path(args: argparse.Namespace) -> str:
    named = getattr(args, "file", None)
    if named and args.list_file and named != args.list_file:
        raise ConfigError(f"two list files: {named} and --list {args.list_file}")
    if named or args.list_file:
        return named or args.list_file
    if args.config:
        return load(args.config).list_file
    return "dispatcher.list"


def list_edit(args: argparse.Namespace) -> int:
    from gdispatch import listedit

    try:
        path = _list_path(args)
    except ConfigError as e:
        print(f"gdispatch: configuration error: {e}", file=sys.stderr)
        return 1
    try:
        if args.list_command == "show":
            rows, problems = listedit.show(path)
            if rows:
                print(listedit.format_table(rows))
            else:
                print(f"{path}: no destinations")
            for problem in problems:
                print(problem, file=sys.stderr)
            return 1 if problems else 0
        if args.list_command == "add":
            lineno, line = listedit.add_destination(path, args.setid, args.uri, args.flags, args.priority,
                                                    args.attrs, " ".join(args.description))
            print(f"{path}:{lineno}: added: {line}")
            return 0
        removed = listedit.remove_destination(path, args.setid, args.uri)
        for lineno, line in removed:
            print(f"{path}:{lineno}: removed: {line}")
        return 0
    except listedit.ListEditError as e:
        print(e, file=sys.stderr)
        return 1


def plugins_command(args: argparse.Namespace) -> int:
    from gdispatch.builtin import Builtin
    from gdispatch.plugins import PluginError, PluginHost

    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    host = PluginHost()
    try:
        host.load(cfg.plugins, cfg.hooks_dir)
    except PluginError as e:
        print(f"gdispatch plugins: {e}", file=sys.stderr)
        return 1
    host.register_builtin(Builtin(cfg.routes))
    hooks = dict(host.plugins())
    # The files in [plugins] enabled order, then installed packages, then the built-in.
    names = [*cfg.plugins, *(n for n in hooks if n not in cfg.plugins and n != "builtin"), "builtin"]
    rows = [(n, host.sources.get(n, ""), ", ".join(hooks[n]) or "(no hook)") for n in names]
    w0 = max(len("PLUGIN"), *(len(r[0]) for r in rows))
    w1 = max(len("FROM"), *(len(r[1]) for r in rows))
    print(f"{'PLUGIN':<{w0}}  {'FROM':<{w1}}  HOOKS")
    for name, source, implemented in rows:
        print(f"{name:<{w0}}  {source:<{w1}}  {implemented}")
    print("\nCall order:")
    for hook in sorted({h for hs in hooks.values() for h in hs}):
        print(f"  {hook}: {', '.join(host.call_order(hook))}")
    unused = sorted(set(cfg.plugin_settings) - set(hooks))
    for name in unused:
        print(f"note: [plugins.{name}] configures no loaded plugin (is {name!r} in [plugins] enabled?)",
              file=sys.stderr)
    return 0


def rpc_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from gdispatch.control.client import ENV_TOKEN, ConnectError, convert_arg, format_fault, format_tree, request
    from gdispatch.control.jsonrpc import NoAnswer, RpcError
    from gdispatch.control.paths import ENV_SOCKET

    try:
        params = [convert_arg(a) for a in args.args]
    except ValueError as e:
        parser.error(f"rpc: {e}")
    tcp = token = None
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--tcp: expected HOST:PORT, got {args.tcp!r}")
        tcp = (host.strip("[]"), int(port))
        if args.token_file:
            try:
                with open(args.token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as e:
                print(f"gdispatch rpc: {args.token_file}: {e.strerror or e}", file=sys.stderr)
                return 2
        else:
            token = os.environ.get(ENV_TOKEN, "")
    try:
        result = request(args.method, params, socket_path=args.socket, tcp=tcp, token=token, timeout=args.timeout)
    except ConnectError as e:
        print("gdispatch rpc: cannot connect to the control socket of gdispatch; tried:", file=sys.stderr)
        for where, why in e.tried:
            print(f"  {where}: {why}", file=sys.stderr)
        print(f"Is gdispatch running? Give the path with --socket PATH or ${ENV_SOCKET} "
              "(or --tcp HOST:PORT for the TCP control port).", file=sys.stderr)
        return 2
    except NoAnswer as e:
        print(f"gdispatch rpc: {e.message}" + (f": {e.data}" if e.data else ""), file=sys.stderr)
        return 2
    except RpcError as e:
        if args.json:
            print(json.dumps(e.as_error(), indent=2, ensure_ascii=False))
            return 1
        # As kamcmd: the fault on standard output and exit status 0, so that scripts
        # written for kamcmd read it where they did; what gdispatch adds on stderr.
        line, details = format_fault(e)
        print(line)
        for item in details:
            print(f"  {item}", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(format_tree(result))
    return 0


def _load_config(path: str | None) -> Config | None:
    """The configuration file (None: the defaults), or None after printing why not."""
    try:
        return load(path)
    except ConfigError as e:
        print(f"gdispatch: configuration error: {e}", file=sys.stderr)
        return None


def key_command(args: argparse.Namespace) -> int:
    from gdispatch.recordroute import KeyFileError, add_key, default_key_path, load_keys

    cfg = _load_config(args.config)
    if cfg is None:
        return 2
    path = cfg.security.key_file or default_key_path()
    try:
        if args.action == "add":
            kid = add_key(path)
            print(f"{path}: new dialogs will be signed with key {kid} once the proxy reloads "
                  f"(systemctl reload gdispatch, or gdispatch rpc dispatcher.reload)")
            return 0
        ring = load_keys(path)
    except KeyFileError as e:
        print(f"gdispatch: {e}", file=sys.stderr)
        return 1
    print(f"{path}: signing key {ring.signing_id.decode()}; verifying {' '.join(k for k, _ in ring.keys)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        if args.list_command == "check":
            return list_check(args.file, args.quiet, args.config)
        if args.list_command in ("show", "add", "rm"):
            return list_edit(args)
        parser.parse_args(["list", "--help"])
        return 2
    if args.command == "rpc":
        return rpc_command(args, parser)
    if args.command == "plugins":
        return plugins_command(args)
    if args.command == "key":
        return key_command(args)
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
    from dataclasses import replace

    if args.log_level:
        cfg = replace(cfg, log_level=args.log_level)
    if args.log_format:
        cfg = replace(cfg, log_format=args.log_format)
    from gdispatch.app import run as run_proxy

    return run_proxy(cfg)


if __name__ == "__main__":
    sys.exit(main())
