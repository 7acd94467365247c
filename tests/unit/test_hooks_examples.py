"""The plugins shipped in gdispatch/hooks/ (tech_prefix, dialplan, domain_route,
orig_headers): their logic on parsed requests, loaded by name and called through
PluginHost as the proxy does."""

from __future__ import annotations

import logging
import sys

import pytest

from gdispatch.config import from_dict
from gdispatch.dispatcher.listfile import parse_line, parse_list
from gdispatch.message_api import Attempt, RequestView, RouteChoice
from gdispatch.plugins import PluginHost
from gdispatch.sip import forward_request, parse_message
from tests.support import sipmsg

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SOURCE = ("udp", "192.0.2.7", 5062)


def request(ruri: str = "sip:0044123@example.com", *headers: str, method: str = "INVITE"):
    return parse_message(sipmsg.request(method, ruri, vias="SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK-1",
                                        from_="<sip:alice@example.org>", from_tag="a1", to="<sip:bob@example.com>",
                                        call_id="c1@example.org", headers=headers))


def dest(attrs: str = "", setid: int = 1, priority: int = 0):
    return parse_line(f"{setid} sip:127.0.0.1:5080 0 {priority} duid=d{priority};{attrs}".rstrip(";"), "t:1")


def host(*names: str, settings: str = "") -> PluginHost:
    """A PluginHost with the shipped plugins `names` loaded and started with [plugins.*]
    `settings`."""
    h = PluginHost()
    h.load(names, "/nonexistent", entry_points=False)  # no hooks_dir: found by name
    cfg = from_dict({"plugins": {"enabled": list(names), **tomllib.loads(settings)}})
    h.call("gdispatch_startup", config=cfg)
    return h


def prepare(h: PluginHost, msg, d, number: int = 1, source=SOURCE) -> Attempt:
    a = Attempt(msg, d, number, source)
    h.call("gdispatch_prepare_attempt", attempt=a)
    return a


def ruri(a: Attempt) -> bytes:
    return a.new_ruri() or a._msg.ruri


# ------------------------------------------------------------------ tech_prefix

class TestTechPrefix:
    @pytest.fixture
    def h(self):
        return host("tech_prefix")

    @pytest.mark.parametrize("attrs, expected", [
        ("prefix=011", b"sip:0110044123@example.com"),
        ("strip=2", b"sip:44123@example.com"),
        ("strip=2;prefix=011", b"sip:01144123@example.com"),  # strip first, then prefix
        ("PREFIX=448;Strip=2", b"sip:44844123@example.com"),  # the module's example; names any case
        ("strip=0;prefix=+", b"sip:+0044123@example.com"),
        ("strip=99;prefix=9", b"sip:9@example.com"),  # more than there is: all of it
        ("weight=50", b"sip:0044123@example.com"),  # no prefix/strip: unchanged
    ])
    def test_prefix_and_strip_attrs(self, h, attrs, expected):
        assert ruri(prepare(h, request(), dest(attrs))) == expected

    def test_failover_attempts_carry_only_their_own_prefix(self, h):
        # Bronze/Silver/Gold on one IP: each attempt starts from the original request
        msg = request("sip:0044123@example.com;user=phone")
        gold, silver, bronze = dest("prefix=1001", priority=30), dest("prefix=1002", priority=20), \
            dest("strip=2;prefix=1003", priority=10)
        got = [ruri(prepare(h, msg, d, n)) for n, d in enumerate((gold, silver, bronze), 1)]
        assert got == [b"sip:10010044123@example.com;user=phone", b"sip:10020044123@example.com;user=phone",
                       b"sip:100344123@example.com;user=phone"]

    def test_no_user_part_is_left_alone(self, h):
        a = prepare(h, request("sip:example.com", method="OPTIONS"), dest("prefix=011"))
        assert not a.edited and h.errors == {}

    def test_a_bad_strip_is_ignored_and_the_prefix_still_applies(self, h):
        assert ruri(prepare(h, request(), dest("strip=two;prefix=9"))) == b"sip:90044123@example.com"
        assert h.errors == {}

    def test_an_invalid_prefix_is_a_counted_error_and_the_uri_is_unchanged(self, h):
        a = prepare(h, request(), dest("prefix=0:1"))
        assert not a.edited and h.errors == {"tech_prefix": 1}

    def test_stripping_everything_without_prefix_is_an_error_not_an_empty_user(self, h):
        a = prepare(h, request(), dest("strip=10"))
        assert not a.edited and h.errors == {"tech_prefix": 1}

    def test_bad_attrs_are_reported_once_when_the_list_loads(self, h, caplog):
        dlist = parse_list("1 sip:127.0.0.1:5080 0 0 duid=a;strip=x\n1 sip:127.0.0.1:5080 0 0 duid=b;prefix=0#1\n"
                           "1 sip:127.0.0.1:5080 0 0 duid=c;prefix=011;strip=1\n", "dispatcher.list")
        with caplog.at_level(logging.WARNING):
            h.call("gdispatch_list_loaded", dispatcher_list=dlist, reason="start")
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 2
        assert "dispatcher.list:1" in warnings[0] and "strip='x'" in warnings[0]
        assert "dispatcher.list:2" in warnings[1] and "prefix='0#1'" in warnings[1]

    def test_it_runs_after_other_plugins_of_the_hook(self):
        # enabled before dialplan, still called after it (trylast): the prefix goes on the translated number
        h = host("tech_prefix", "dialplan", settings='[[dialplan.rule]]\nmatch = "^00"\nreplace = "+"\n')
        assert h.call_order("gdispatch_prepare_attempt") == ["dialplan", "tech_prefix"]
        assert ruri(prepare(h, request(), dest("prefix=011"))) == b"sip:011+44123@example.com"


# ------------------------------------------------------------------ dialplan

RULES = '''
[[dialplan.rule]]
match = "^00"
replace = "+"

[[dialplan.rule]]
match = "^0([1-9][0-9]{5})$"
replace = "+44\\\\1"

[[dialplan.rule]]
match = "^9(?P<rest>[0-9]+)$"
replace = "\\\\g<rest>"
sets = [2]
'''


class TestDialplan:
    @pytest.fixture
    def h(self):
        return host("dialplan", settings=RULES)

    @pytest.mark.parametrize("user, setid, expected", [
        ("0044123", 1, b"sip:+44123@example.com"),  # only the match is replaced
        ("0123456", 1, b"sip:+44123456@example.com"),  # groups
        ("01234567", 1, b"sip:01234567@example.com"),  # anchored: no rule matches
        ("9555", 2, b"sip:555@example.com"),  # named group, rule of set 2
        ("9555", 1, b"sip:9555@example.com"),  # ... not for set 1
        ("alice", 1, b"sip:alice@example.com"),
    ])
    def test_first_matching_rule_rewrites_the_user(self, h, user, setid, expected):
        assert ruri(prepare(h, request(f"sip:{user}@example.com"), dest(setid=setid))) == expected

    def test_only_the_first_matching_rule_applies(self):
        h = host("dialplan", settings='[[dialplan.rule]]\nmatch = "^00"\nreplace = "0"\n'
                                      '[[dialplan.rule]]\nmatch = "^0"\nreplace = "X"\n')
        assert ruri(prepare(h, request("sip:00123@example.com"), dest())) == b"sip:0123@example.com"

    def test_every_attempt_is_translated_from_the_original(self, h):
        msg = request("sip:0044123@example.com")
        assert [ruri(prepare(h, msg, dest(), n)) for n in (1, 2)] == [b"sip:+44123@example.com"] * 2

    def test_a_result_that_is_no_valid_user_is_counted_and_not_sent(self):
        h = host("dialplan", settings='[[dialplan.rule]]\nmatch = "^00"\nreplace = "a b"\n')
        a = prepare(h, request(), dest())
        assert not a.edited and h.errors == {"dialplan": 1}

    def test_no_table_no_rules(self):
        h = host("dialplan")
        assert not prepare(h, request(), dest()).edited and h.errors == {}

    @pytest.mark.parametrize("table, message", [
        ('[[dialplan.rule]]\nmatch = "(^00"\nreplace = "+"\n', "rule]] #2: match '(^00'"),
        ('[[dialplan.rule]]\nmatch = "^00"\nreplace = "\\\\2"\n', "has no group 2"),
        ('[[dialplan.rule]]\nmatch = "^00"\nreplace = "\\\\g<x>"\n', "has no group x"),
        ('[[dialplan.rule]]\nmatch = "^00"\n', "replace: expected a string"),
        ('[[dialplan.rule]]\nreplace = "+"\n', "match: expected a regular expression"),
        ('[[dialplan.rule]]\nmatch = "^00"\nreplace = "+"\nsets = 1\n', "sets: expected a list"),
        ('[[dialplan.rule]]\nmatch = "^00"\nreplace = "+"\nmatch_op = 1\n', "unknown key 'match_op'"),
        ('[dialplan]\nrules = []\n', "unknown key 'rules'"),
    ])
    def test_a_bad_table_is_reported_at_startup_and_then_no_rule_applies(self, table, message, caplog):
        good = '[[dialplan.rule]]\nmatch = "^00"\nreplace = "+"\n'
        with caplog.at_level(logging.ERROR):
            h = host("dialplan", settings=table if table.startswith("[dialplan]") else good + table)
        assert h.errors == {"dialplan": 1}
        assert any("plugin dialplan failed in gdispatch_startup" in r.getMessage() and message in r.exc_text
                   for r in caplog.records), [r.exc_text for r in caplog.records]
        assert not prepare(h, request(), dest()).edited  # not half a dial plan


# ------------------------------------------------------------------ domain_route

DOMAINS = '''
[domain_route]
algorithm = 8
methods = ["INVITE", "message"]

[domain_route.domains]
"pbx1.example.com" = 1
"*.pbx.example.com" = { set = 2, algorithm = 4, limit = 1, failover_codes = ["503"], mode = "domain" }
"*.b.pbx.example.com" = 3
'''


def choose(h: PluginHost, ruri_: str, method: str = "INVITE"):
    return h.call_first("gdispatch_choose_route", request=RequestView(request(ruri_, method=method), SOURCE),
                        source_sets=frozenset())


class TestDomainRoute:
    @pytest.fixture
    def h(self):
        return host("domain_route", settings=DOMAINS)

    @pytest.mark.parametrize("ruri_, expected", [
        ("sip:100@pbx1.example.com", (1, 8, "pbx1.example.com")),
        ("sip:100@PBX1.Example.COM:5070", (1, 8, "pbx1.example.com")),  # any case, any port
        ("sip:100@a.pbx.example.com", (2, 4, "*.pbx.example.com")),
        ("sip:100@x.a.pbx.example.com", (2, 4, "*.pbx.example.com")),  # any depth
        ("sip:100@x.b.pbx.example.com", (3, 8, "*.b.pbx.example.com")),  # the longest suffix wins
        ("sip:100@b.pbx.example.com", (2, 4, "*.pbx.example.com")),  # "*.b..." needs one more label
        ("sip:100@pbx.example.com", None),  # a wildcard does not match its own base
        ("sip:100@pbx2.example.com", None),
        ("sip:100@example.com", None),
    ])
    def test_domain_to_set(self, h, ruri_, expected):
        c = choose(h, ruri_)
        if expected is None:
            assert c is None
        else:
            assert isinstance(c, RouteChoice)
            assert (c.set, c.algorithm, c.name) == (expected[0], expected[1], f"domain_route {expected[2]}")

    def test_a_domain_table_passes_the_route_keys(self, h):
        c = choose(h, "sip:100@a.pbx.example.com")
        assert (c.limit, c.failover_codes, c.mode) == (1, frozenset({503}), "domain")
        c = choose(h, "sip:100@pbx1.example.com")
        assert (c.limit, c.failover_codes, c.mode) == (0, None, "dst")  # None: the route defaults

    def test_methods(self, h):
        assert choose(h, "sip:100@pbx1.example.com", "MESSAGE").set == 1
        assert choose(h, "sip:100@pbx1.example.com", "OPTIONS") is None

    def test_catch_all(self):
        h = host("domain_route", settings='[domain_route.domains]\n"*" = 5\n"a.example.com" = 1\n')
        assert choose(h, "sip:x@a.example.com").set == 1
        assert (choose(h, "sip:x@elsewhere.net").set, choose(h, "sip:x@elsewhere.net").algorithm) == (5, 4)

    def test_unmatched_requests_fall_through_to_the_route_tables(self, h):
        from gdispatch.builtin import Builtin
        from gdispatch.config import Route

        h.register_builtin(Builtin((Route(methods=frozenset({"INVITE"}), set=9),)))
        assert choose(h, "sip:100@pbx1.example.com").set == 1
        assert choose(h, "sip:100@other.example.com").set == 9  # the [[route]] table (builtin)

    @pytest.mark.parametrize("table, message", [
        ('"a.com" = "1"', "expected a whole number"),
        ('"a.com" = { algorithm = 4 }', "no set"),
        ('"a.com" = { set = 1, weight = 4 }', "unknown key 'weight'"),
        ('"a.com" = { set = 1, mode = "x" }', "mode: expected"),
        ('"a.com" = { set = 1, failover_codes = ["200"] }', "failover_codes"),
        ('"a.*.com" = 1', "expected a domain name"),
        ('"*.*.com" = 1', "a wildcard is"),
        ('[domain_route]\nalgorithm = 77', "not supported"),
        ('[domain_route]\nmethods = "INVITE"', "methods: expected a list"),
        ('[domain_route]\nroutes = {}', "unknown key 'routes'"),
    ])
    def test_a_bad_table_is_reported_and_routes_nothing(self, table, message, caplog):
        if table.startswith("[domain_route]"):
            settings = table + '\n[domain_route.domains]\n"ok.com" = 1\n'
        else:
            settings = '[domain_route.domains]\n"ok.com" = 1\n' + table + "\n"
        with caplog.at_level(logging.ERROR):
            h = host("domain_route", settings=settings)
        assert h.errors == {"domain_route": 1}
        assert any(message in (r.exc_text or "") for r in caplog.records), [r.exc_text for r in caplog.records]
        assert choose(h, "sip:x@ok.com") is None  # not half a table

    def test_sets_missing_from_the_list_are_warned_about(self, h, caplog):
        dlist = parse_list("1 sip:127.0.0.1:5080 0 0\n2 sip:127.0.0.1:5081 0 0\n", "dispatcher.list")
        with caplog.at_level(logging.WARNING):
            h.call("gdispatch_list_loaded", dispatcher_list=dlist, reason="start")
        assert [r.getMessage() for r in caplog.records if "domain_route" in r.getMessage()] == [
            'domain_route: *.b.pbx.example.com -> set 3, which dispatcher.list does not have: such calls get '
            '"no destination"']


# ------------------------------------------------------------------ orig_headers

class TestOrigHeaders:
    def sent(self, a: Attempt):
        return parse_message(forward_request(a._msg, via=b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK.p",
                                             add_headers=a.header_lines(), remove_headers=a.removed_headers()))

    def test_caller_address_and_transport_as_yeti_numbers(self):
        h = host("orig_headers")
        for transport, number in (("udp", b"1"), ("tcp", b"2"), ("tls", b"3")):
            out = self.sent(prepare(h, request(), dest(), source=(transport, "203.0.113.5", 5071)))
            assert (out.get("x-orig-ip"), out.get("x-orig-port"), out.get("x-orig-proto")) == \
                (b"203.0.113.5", b"5071", number)

    def test_proto_as_a_name_and_ipv6(self):
        h = host("orig_headers", settings='[orig_headers]\nproto = "name"\n')
        out = self.sent(prepare(h, request(), dest(), source=("tcp", "2001:db8::5", 5060)))
        assert (out.get("x-orig-ip"), out.get("x-orig-proto")) == (b"2001:db8::5", b"TCP")

    def test_what_the_caller_sent_is_replaced_not_trusted(self):
        h = host("orig_headers")
        msg = request("sip:1@example.com", "X-ORIG-IP: 10.6.6.6", "x-orig-port: 1", "X-Orig-Proto: 9")
        out = self.sent(prepare(h, msg, dest()))
        assert out.get_all("x-orig-ip") == [b"192.0.2.7"]
        assert out.get_all("x-orig-port") == [b"5062"] and out.get_all("x-orig-proto") == [b"1"]

    def test_only_towards_the_sets_named(self):
        h = host("orig_headers", settings="[orig_headers]\nsets = [2]\n")
        assert not prepare(h, request(), dest(setid=1)).edited
        assert prepare(h, request(), dest(setid=2)).header_lines()[0] == b"X-Orig-IP: 192.0.2.7"

    def test_a_bad_table_is_reported_and_the_defaults_apply(self):
        h = host("orig_headers", settings='[orig_headers]\nproto = "words"\n')
        assert h.errors == {"orig_headers": 1}
        assert prepare(h, request(), dest()).header_lines()[2] == b"X-Orig-Proto: 1"
