"""gdispatch.toml: defaults, validation messages that name the key, CLI overrides."""

import re

import pytest

from gdispatch.config import (
    Config,
    ConfigError,
    Listen,
    from_dict,
    load,
    parse_codes,
    parse_listen,
    with_overrides,
)


def test_retry_down_is_a_switch():
    assert Config().probing.retry_down and not from_dict({"probing": {"retry_down": False}}).probing.retry_down
    with pytest.raises(ConfigError, match=r"\[probing\].retry_down: expected true or false"):
        from_dict({"probing": {"retry_down": "no"}})


def test_failover_codes_leave_codes_out_with_an_exclamation_mark():
    assert parse_codes(["4xx", "!401", "!407"], "k") == frozenset(range(400, 500)) - {401, 407}
    assert parse_codes(["!486", "486", "5xx"], "k") == frozenset(range(500, 600))
    assert parse_codes(["3xx", "4xx", "5xx", "6xx", "!4xx"], "k") == frozenset(range(300, 400)) | frozenset(
        range(500, 700))
    with pytest.raises(ConfigError, match=r"'!abc': expected a final code 300-699"):
        parse_codes(["!abc"], "k")


def test_defaults_are_explicit():
    c = Config()
    assert [str(x) for x in c.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert c.timers.fr_timer == 2.0 and c.timers.fr_inv_timer == 120.0 and c.timers.t1 == 0.5
    r = c.routes[0]
    assert r.methods == {"INVITE"} and r.set == 1 and r.algorithm == 4
    assert 408 in r.failover_codes and 500 in r.failover_codes and 599 in r.failover_codes
    # The seed's MG1 answering 404 goes on to MG2; what the caller must answer (401, 407) or
    # the callee decided (486, 6xx), a redirect and the caller's own CANCEL (487) do not.
    assert 404 in r.failover_codes and 480 in r.failover_codes and 403 in r.failover_codes
    assert not r.failover_codes & {400, 401, 407, 413, 420, 421, 482, 483, 484, 486, 487, 494, 302, 600, 603, 604,
                                   606}
    assert c.kamailio_order  # equal priorities in Kamailio's order: calls go where Kamailio sent them


def test_listen_forms():
    assert parse_listen("udp:127.0.0.1:5060").port == 5060
    l6 = parse_listen("tcp:[::1]:5070")
    assert (l6.transport, l6.host, l6.port, str(l6)) == ("tcp", "::1", 5070, "tcp:[::1]:5070")


@pytest.mark.parametrize("value,words", [
    ("sctp:127.0.0.1:5060", "PROTO"),
    ("udp:localhost:5060", "not an IP address"),
    ("udp:127.0.0.1:99999", "port"),
    ("udp:0.0.0.0:5060", "concrete address"),
])
def test_bad_listen(value, words):
    with pytest.raises(ConfigError, match=words):
        parse_listen(value)


@pytest.mark.parametrize("data,words", [
    ({"timers": {"t1": "fast"}}, r"\[timers\].t1: expected a number"),
    ({"timers": {"fr_timer": -1}}, r"\[timers\].fr_timer"),
    ({"server": {"bogus": 1}}, r"\[server\]: unknown key 'bogus'"),
    ({"route": [{"algorithm": 99}]}, r"\[\[route\]\] #1.algorithm: 99 is not supported"),
    ({"route": [{"failover_codes": ["4xy"]}]}, r"failover_codes: '4xy'"),
    ({"server": {"log_level": "loud"}}, r"log_level"),
])
def test_errors_name_the_key(data, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(data)


def test_file_errors_name_the_file(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text("[timers]\nt1 = 'x'\n")
    with pytest.raises(ConfigError, match=r"g.toml: \[timers\].t1"):
        load(str(p))
    p.write_text("[timers\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(str(p))


def test_list_file_relative_to_config(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text("[dispatcher]\nlist_file = 'd.list'\n")
    assert load(str(p)).list_file == str(tmp_path / "d.list")


def test_flags_override_file():
    c = from_dict({"route": [{"methods": ["INVITE"], "set": 2, "algorithm": 8}, {"methods": [], "reply": 404}]})
    c2 = with_overrides(c, listen=["udp:127.0.0.1:5999"], list_file="x.list", set_id=3, algorithm=0)
    assert [str(x) for x in c2.listen] == ["udp:127.0.0.1:5999"] and c2.list_file == "x.list"
    assert (c2.routes[0].set, c2.routes[0].algorithm) == (3, 0)
    assert c2.routes[1].reply == 404
    with pytest.raises(ConfigError, match="--algorithm"):
        with_overrides(c, algorithm=77)


def test_route_matching_keys():
    c = from_dict({"route": [
        {"methods": [], "user_prefix": ["00", "+44"], "set": 2},
        {"user_regex": "^1[0-9]{3}$", "set": 3},
        {"domains": ["PBX1.example.com"], "methods": ["INVITE", "MESSAGE"], "set": 4, "mode": "domain"},
        {"from_set": 7, "set": 5},
    ]})
    r1, r2, r3, r4 = c.routes
    assert r1.matches("BYE", "0049301", "x", frozenset()) and r1.matches("INVITE", "+4420", "x", frozenset())
    assert not r1.matches("INVITE", "049", "x", frozenset()) and not r1.matches("INVITE", None, "x", frozenset())
    assert r2.matches("INVITE", "1234", "x", frozenset()) and not r2.matches("INVITE", "12345", "x", frozenset())
    assert not r2.matches("MESSAGE", "1234", "x", frozenset())  # methods default to INVITE
    assert r3.matches("MESSAGE", None, "pbx1.example.com", frozenset()) and r3.mode == "domain"
    assert not r3.matches("INVITE", None, "pbx2.example.com", frozenset())
    assert r4.matches("INVITE", "1", "h", frozenset({7})) and not r4.matches("INVITE", "1", "h", frozenset({1}))


@pytest.mark.parametrize("route,words", [
    ({"mode": "both"}, r"mode: expected \"dst\""),
    ({"algorithm": 7}, r"hash_template: algorithm 7 hashes a template"),
    ({"algorithm": 7, "hash_template": "$nope"}, r"hash_template: "),
    ({"user_regex": "(["}, r"user_regex: not a valid regular expression"),
    ({"from_set": "one"}, r"from_set: expected a set id"),
    ({"no_destination_reply": 99}, r"no_destination_reply"),
    ({"name": "trunks", "set": "x"}, r"\[\[route\]\] #1 \(trunks\).set"),
])
def test_route_errors_name_the_key(route, words):
    with pytest.raises(ConfigError, match=words):
        from_dict({"route": [route]})


def test_dispatcher_and_dns_keys():
    c = from_dict({"dispatcher": {"load_mode": "skip", "kamailio_order": True, "kamailio_compat": True},
                   "dns": {"nameservers": ["127.0.0.1:5353"], "refresh_interval": 60}})
    assert (c.load_mode, c.kamailio_order, c.kamailio_compat) == ("skip", True, True)
    assert c.dns_nameservers == (("127.0.0.1", 5353),) and c.dns_refresh == 60.0
    with pytest.raises(ConfigError, match=r"\[dispatcher\].load_mode"):
        from_dict({"dispatcher": {"load_mode": "lenient"}})
    with pytest.raises(ConfigError, match=r"\[dispatcher\].kamailio_order: expected true or false"):
        from_dict({"dispatcher": {"kamailio_order": "yes"}})
    with pytest.raises(ConfigError, match=r"\[dns\].nameservers"):
        from_dict({"dns": {"nameservers": ["not an address"]}})


def test_example_config_loads():
    from pathlib import Path

    c = load(str(Path(__file__).resolve().parents[2] / "gdispatch.toml"))
    assert [str(x) for x in c.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]


def test_overload_and_wait_timer_keys():
    c = from_dict({"overload": {"max_backlog": 0, "max_calls_in_setup": 500, "hold": 2, "retry_after": 9},
                   "timers": {"wt_timer": 0}, "server": {"workers": 2}})
    assert (c.overload.max_backlog, c.overload.max_calls_in_setup, c.overload.hold, c.overload.retry_after) == (
        0.0, 500, 2.0, 9)
    assert c.timers.wt_timer == 0.0 and c.workers == 2
    assert Config().timers.wt_timer == 5.0 and Config().overload.max_backlog == 0.25
    for data, words in (({"overload": {"max_calls_in_setup": -1}}, "[overload].max_calls_in_setup"),
                        ({"overload": {"retry_after": 1.5}}, "[overload].retry_after"),
                        ({"overload": {"queue": 1}}, "queue"),
                        ({"timers": {"wt_timer": -1}}, "[timers].wt_timer")):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            from_dict(data)


@pytest.mark.parametrize("text", ["[timers]\nt2 = inf\n", "[timers]\nfr_timer = nan\n",
                                  "[overload]\nmax_backlog = inf\n", "[probing]\ninterval = -inf\n"])
def test_toml_inf_and_nan_are_not_numbers_of_seconds(text, tmp_path):
    path = tmp_path / "gdispatch.toml"
    path.write_text(text)
    key = text.split("\n")[1].split(" ")[0]
    with pytest.raises(ConfigError, match=rf"\.{key}: expected a number of seconds"):
        load(str(path))


def test_routes_to_a_set_the_list_does_not_have_are_named():
    from gdispatch.dispatcher.listfile import parse_list
    from gdispatch.proxy.routing import missing_sets

    dlist = parse_list("1 sip:127.0.0.1:5071\n2 sip:127.0.0.1:5072\n", "d.list")
    c = from_dict({"route": [
        {"set": 1},
        {"name": "pbx", "set": 3, "from_set": 4},  # both typos
        {"reply": 403, "from_set": 2},  # answers locally: its set (default 1) is not used
        {"reply": 404, "set": 9},
    ]})
    assert missing_sets(c.routes, dlist) == [
        "[[route]] #2 (pbx): set 3 is not in d.list (its sets: 1, 2); give a set it has (set = N in [[route]], "
        "or --set N)",
        "[[route]] #2 (pbx): from_set 4 is not in d.list (its sets: 1, 2)"]
    assert missing_sets(Config().routes, parse_list("2 sip:127.0.0.1:5072\n", "two.list")) == [
        "[[route]] #1: set 1 is not in two.list (its sets: 2); give a set it has (set = N in [[route]], "
        "or --set N)"]
    assert missing_sets(Config().routes, parse_list("# nothing yet\n", "empty.list")) == []  # as Kamailio loads it
    assert missing_sets(with_overrides(Config(), set_id=2).routes, dlist) == []


def test_a_listen_address_gets_a_name_the_kamailio_way_or_as_a_table():
    c = from_dict({"server": {"listen": ["udp:127.0.0.1:5060", 'udp:127.0.0.2:5060 name "carrier"',
                                         {"address": "tcp:[::1]:5060", "name": "six"}]}})
    assert [(str(x), x.name) for x in c.listen] == [("udp:127.0.0.1:5060", ""), ("udp:127.0.0.2:5060", "carrier"),
                                                    ("tcp:[::1]:5060", "six")]
    assert parse_listen('udp:127.0.0.2:5060  name  "b-2.x"').name == "b-2.x"
    c2 = with_overrides(Config(), listen=['udp:127.0.0.3:5070 name "cli"'])
    assert c2.listen == (Listen("udp", "127.0.0.3", 5070, "cli"),)


@pytest.mark.parametrize("listen,words", [
    (['udp:127.0.0.1:5060 name "a b"'], "a socket name is one word"),
    (['udp:127.0.0.1:5060 name ""'], "a socket name is one word"),
    ([{"address": "udp:127.0.0.1:5060", "nom": "x"}], "unknown key 'nom'"),
    ([{"name": "x"}], "expected { address"),
    ([5060], "expected \"PROTO:IP:PORT\""),
    (["udp:127.0.0.1:5060", "udp:127.0.0.1:5060"], "udp:127.0.0.1:5060 is given twice"),
    (['udp:127.0.0.1:5060 name "a"', 'tcp:127.0.0.1:5060 name "a"'], "the name 'a' is given to two addresses"),
])
def test_bad_listen_names(listen, words):
    with pytest.raises(ConfigError, match=r"\[server\].listen: .*" + re.escape(words)):
        from_dict({"server": {"listen": listen}})


def test_the_default_socket_must_be_a_listen_address():
    listen = ["udp:127.0.0.1:5060", 'udp:127.0.0.2:5060 name "carrier"']
    c = from_dict({"server": {"listen": listen},
                   "dispatcher": {"default_socket": "udp:127.0.0.2:5060", "default_sockname": "carrier"}})
    assert (c.default_socket, c.default_sockname) == ("udp:127.0.0.2:5060", "carrier")
    for disp, words in (
        ({"default_socket": "udp:10.0.0.1:5060"},
         "[dispatcher].default_socket: 'udp:10.0.0.1:5060': not a listen address of this proxy (listening on: "
         'udp:127.0.0.1:5060, udp:127.0.0.2:5060 name "carrier")'),
        ({"default_sockname": "other"}, "[dispatcher].default_sockname: 'other': no listen address has this name"),
        ({"default_socket": 5060}, "[dispatcher].default_socket: expected a string"),
    ):
        with pytest.raises(ConfigError, match=re.escape(words)):
            from_dict({"server": {"listen": listen}, "dispatcher": disp})
    # A --listen that drops the default socket's address is refused too.
    with pytest.raises(ConfigError, match=re.escape("--listen: [dispatcher].default_sockname: 'carrier'")):
        with_overrides(c, listen=["udp:127.0.0.1:5060"])


def test_the_log_format_is_text_or_json():
    assert from_dict({}).log_format == "text"
    assert from_dict({"server": {"log_format": "json"}}).log_format == "json"
    with pytest.raises(ConfigError, match=r"\[server\].log_format: expected \"text\" or \"json\", got 'xml'"):
        from_dict({"server": {"log_format": "xml"}})
