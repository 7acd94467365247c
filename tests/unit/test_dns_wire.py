"""The DNS wire layer (gdispatch.dns.wire, dnspython underneath) with replies built
octet by octet as servers send them: queries, answers with compression pointers, CNAME
chains, and malformed input that must raise DnsFormatError, with a clear message, rather
than crash, loop or pass."""

from __future__ import annotations

import random
import struct

import dns.name
import pytest

from gdispatch.dns.wire import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_SRV,
    DnsFormatError,
    Record,
    SrvData,
    answers_for,
    decode_message,
    decode_question,
    encode_query,
    is_reply_to,
    is_truncated,
    name_text,
    rcode_name,
    rcode_of,
    records,
    to_name,
    type_name,
)


def header(qid=0x1234, flags=0x8180, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def question(name: bytes, qtype: int) -> bytes:
    return name + struct.pack("!HH", qtype, 1)


GW = b"\x02gw\x04test\x00"
SIP_GW = b"\x04_sip\x04_udp" + GW  # "_sip._udp.gw.test" at offset 12 in the messages below


# -- queries ----------------------------------------------------------------------------


def test_query_bytes_are_header_with_rd_and_one_question():
    assert encode_query(0xBEEF, "gw.test", TYPE_A) == (
        b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" b"\x02gw\x04test\x00" b"\x00\x01\x00\x01"
    )


def test_query_without_recursion_desired_clears_rd():
    assert encode_query(1, "gw.test", TYPE_SRV, recursion_desired=False)[2:4] == b"\x00\x00"


def test_query_round_trips_through_the_decoder():
    m = decode_message(encode_query(7, "_sip._udp.GW.test.", TYPE_SRV))
    assert (m.id, is_reply_to(m, 7, "_sip._udp.gw.test", TYPE_SRV)) == (7, False)  # a query, not a reply
    (q,) = m.question
    assert (name_text(q.name), q.rdtype) == ("_sip._udp.gw.test", TYPE_SRV)


def test_query_id_must_fit_16_bits():
    with pytest.raises(ValueError):
        encode_query(0x10000, "gw.test", TYPE_A)


@pytest.mark.parametrize("name", ["", "."])
def test_root_name_is_one_zero_octet(name):
    assert to_name(name).to_wire() == b"\x00"
    assert name_text(to_name(name)) == "."


def test_final_dot_is_optional():
    assert to_name("gw.test.").to_wire() == to_name("gw.test").to_wire() == GW


def test_names_are_not_idna_converted():
    # A SIP host name is ASCII: "xn--" is sent as written, a non-ASCII name is refused.
    assert to_name("xn--bcher-kva.test").to_wire() == b"\x0dxn--bcher-kva\x04test\x00"


@pytest.mark.parametrize("name, why", [
    ("a..b", "empty label"),
    ("x" * 64 + ".test", "longer than 63"),
    (".".join(["x" * 63] * 4), "longer than 255"),
    ("gw.tést", "not ASCII"),
])
def test_names_that_cannot_be_encoded(name, why):
    with pytest.raises(DnsFormatError, match=why):
        encode_query(1, name, TYPE_A)


def test_longest_name_is_accepted():
    name = ".".join(["x" * 63] * 3 + ["x" * 61])  # 4 * 64 - 2 + 1 = 255 octets
    assert len(to_name(name).to_wire()) == 255


@pytest.mark.parametrize("code, text", [(0, "NOERROR"), (2, "SERVFAIL"), (3, "NXDOMAIN"), (5, "REFUSED"),
                                        (12, "RCODE12")])
def test_rcode_names(code, text):
    assert rcode_name(code) == text


def test_type_names():
    assert (type_name(TYPE_SRV), type_name(TYPE_AAAA), type_name(65280)) == ("SRV", "AAAA", "TYPE65280")


# -- answers ----------------------------------------------------------------------------


def test_a_and_aaaa_answers_with_ttls():
    msg = (header(an=2) + question(GW, TYPE_A)
           + rr(b"\xc0\x0c", TYPE_A, 300, bytes([192, 0, 2, 7]))
           + rr(b"\xc0\x0c", TYPE_AAAA, 60, bytes.fromhex("20010db8000000000000000000000001")))
    m = decode_message(msg)
    assert is_reply_to(m, 0x1234, "gw.test", TYPE_A) and rcode_of(m) == 0 and not is_truncated(m)
    assert records(m) == [
        Record("gw.test", TYPE_A, 300, "192.0.2.7"),
        Record("gw.test", TYPE_AAAA, 60, "2001:db8::1"),
    ]


def test_ttl_with_top_bit_set_counts_as_zero():
    msg = header(an=1) + question(GW, TYPE_A) + rr(b"\xc0\x0c", TYPE_A, 0x80000001, b"\x7f\x00\x00\x01")
    assert records(decode_message(msg))[0].ttl == 0


def test_header_flags_rcode_and_truncation():
    m = decode_message(header(flags=0x8183, an=0) + question(GW, TYPE_A))
    assert rcode_of(m) == 3 and rcode_name(rcode_of(m)) == "NXDOMAIN" and not is_truncated(m)
    assert is_truncated(decode_message(header(flags=0x8180 | 0x0200) + question(GW, TYPE_A)))


def test_a_truncated_reply_is_matched_by_its_question_even_when_the_rest_is_cut():
    # TC set and the answer cut in the middle of a record: the question still reads.
    cut = header(flags=0x8380, an=2) + question(GW, TYPE_A) + rr(b"\xc0\x0c", TYPE_A, 300, b"\x7f\x00\x00\x01")[:7]
    with pytest.raises(DnsFormatError):
        decode_message(cut)
    head = decode_question(cut)
    assert is_reply_to(head, 0x1234, "GW.test.", TYPE_A) and is_truncated(head)


def test_is_reply_to_checks_flag_id_and_the_one_question():
    reply = decode_message(header() + question(GW, TYPE_A))
    assert is_reply_to(reply, 0x1234, "gw.test", TYPE_A)
    assert not is_reply_to(reply, 0x1235, "gw.test", TYPE_A)
    assert not is_reply_to(reply, 0x1234, "evil.test", TYPE_A)
    assert not is_reply_to(reply, 0x1234, "gw.test", TYPE_AAAA)
    assert not is_reply_to(decode_message(header(flags=0x0100) + question(GW, TYPE_A)), 0x1234, "gw.test", TYPE_A)
    assert not is_reply_to(decode_message(header(qd=0)), 0x1234, "gw.test", TYPE_A)
    chaos = decode_message(header() + GW + struct.pack("!HH", TYPE_A, 3))
    assert not is_reply_to(chaos, 0x1234, "gw.test", TYPE_A)


def test_srv_answers_with_compressed_owner_and_target():
    # The second target points at the first one's "localhost" label (offset 12 + len
    # question + first record's fixed part + 6 octets of SRV numbers).
    q = question(SIP_GW, TYPE_SRV)
    first = rr(b"\xc0\x0c", TYPE_SRV, 300, struct.pack("!HHH", 10, 60, 5071) + b"\x09localhost\x00")
    target_at = 12 + len(q) + 2 + 10 + 6
    pointer = struct.pack("!H", 0xC000 | target_at)
    second = rr(b"\xc0\x0c", TYPE_SRV, 120, struct.pack("!HHH", 20, 0, 5072) + b"\x03gw2" + pointer)
    m = decode_message(header(an=2) + q + first + second)
    assert is_reply_to(m, 0x1234, "_sip._udp.gw.test", TYPE_SRV)
    assert records(m) == [
        Record("_sip._udp.gw.test", TYPE_SRV, 300, SrvData(10, 60, 5071, "localhost")),
        Record("_sip._udp.gw.test", TYPE_SRV, 120, SrvData(20, 0, 5072, "gw2.localhost")),
    ]


def test_names_are_lowercased_and_odd_octets_escaped():
    odd = b"\x03a.b\x02\x00Z\x04TEST\x00"
    m = decode_question(header(an=0) + question(odd, TYPE_A))
    assert name_text(m.question[0].name) == "a\\.b.\\000z.test"
    assert name_text(dns.name.from_wire(b"\x04a\\.b\x00", 0)[0]) == "a\\\\\\.b"  # not the same name


def test_other_types_and_classes_are_left_out():
    msg = (header(an=3) + question(GW, TYPE_A)
           + rr(b"\xc0\x0c", 16, 5, b"\x03txt")  # TXT
           + rr(b"\xc0\x0c", TYPE_A, 5, b"\x01\x02\x03\x04", rclass=4)  # class HS
           + rr(b"\xc0\x0c", TYPE_A, 5, b"\x01\x02\x03\x05"))
    assert records(decode_message(msg)) == [Record("gw.test", TYPE_A, 5, "1.2.3.5")]


def test_authority_and_additional_sections_are_read():
    soa = rr(b"\xc0\x0c", 6, 3600, b"\x00\x00" + struct.pack("!IIIII", 1, 2, 3, 4, 5))
    extra = rr(b"\x09localhost\x00", TYPE_A, 10, b"\x7f\x00\x00\x01")
    m = decode_message(header(flags=0x8183, ns=1, ar=1) + question(SIP_GW, TYPE_SRV) + soa + extra)
    assert [r.rdtype for r in m.authority] == [6] and m.additional[0][0].address == "127.0.0.1"
    assert records(m) == []


def test_trailing_padding_is_ignored():
    m = decode_message(header(an=0) + question(GW, TYPE_A) + b"\x00" * 5)
    assert is_reply_to(m, 0x1234, "gw.test", TYPE_A)


def test_answers_for_follows_a_cname_chain_in_the_answer_section():
    msg = (header(an=3) + question(GW, TYPE_A)
           + rr(b"\xc0\x0c", TYPE_CNAME, 30, b"\x05alias\xc0\x0f")  # alias.test
           + rr(b"\x05alias\x04test\x00", TYPE_CNAME, 30, b"\x04real\xc0\x0f")
           + rr(b"\x04real\xc0\x0f", TYPE_A, 30, b"\x7f\x00\x00\x05"))
    m = decode_message(msg)
    found, end = answers_for(m, "GW.test.", TYPE_A)
    assert [r.data for r in found] == ["127.0.0.5"] and end == "real.test"


def test_answers_for_reports_where_an_unchased_chain_ends():
    msg = header(an=1) + question(GW, TYPE_A) + rr(b"\xc0\x0c", TYPE_CNAME, 30, b"\x05alias\xc0\x0f")
    assert answers_for(decode_message(msg), "gw.test", TYPE_A) == ([], "alias.test")


def test_answers_for_stops_on_a_cname_loop():
    msg = (header(an=2) + question(GW, TYPE_A)
           + rr(b"\xc0\x0c", TYPE_CNAME, 30, b"\x01x\xc0\x0f")  # gw.test → x.test
           + rr(b"\x01x\x04test\x00", TYPE_CNAME, 30, b"\xc0\x0c"))  # x.test → gw.test
    assert answers_for(decode_message(msg), "gw.test", TYPE_A) == ([], "x.test")


# -- malformed input --------------------------------------------------------------------


def test_short_header():
    for decode in (decode_message, decode_question):
        with pytest.raises(DnsFormatError, match="malformed DNS message: .*too short"):
            decode(b"\x12\x34\x81")


def test_pointer_to_itself_is_refused():
    with pytest.raises(DnsFormatError, match="malformed DNS message: .*compression pointer"):
        decode_message(header() + b"\xc0\x0c" + b"\x00\x01\x00\x01")


def test_two_pointers_pointing_at_each_other_are_refused():
    # offset 12: pointer to 14; offset 14: pointer to 12 (a forward pointer, then a cycle)
    with pytest.raises(DnsFormatError, match="compression pointer"):
        decode_message(header(qd=1, an=1) + b"\x01a\xc0\x0e" + b"\x00\x01\x00\x01" + b"\xc0\x0c" + b"\x00" * 10)


def test_a_pointer_into_the_name_being_read_is_refused():
    # "a" then a pointer back to the start of the same name: a loop RFC 1035 forbids.
    with pytest.raises(DnsFormatError, match="compression pointer"):
        decode_question(header() + b"\x01a\xc0\x0c" + b"\x00\x01\x00\x01")


PRIVATE = 65280  # a private-use type (RFC 6895 §3.1): its rdata is opaque octets


def names_then_a_record(names: bytes, owner_at_offset_in_names: int) -> bytes:
    """A reply whose first answer carries `names` as opaque rdata and whose second
    answer's owner is a pointer into them: a decoder reads the names only there."""
    first = rr(b"\xc0\x0c", PRIVATE, 5, names)
    names_at = 12 + len(question(GW, TYPE_A)) + 12  # header, question, owner + fixed part
    owner = struct.pack("!H", 0xC000 | (names_at + owner_at_offset_in_names))
    return header(an=2) + question(GW, TYPE_A) + first + rr(owner, TYPE_A, 5, b"\x7f\x00\x00\x01")


def test_names_in_opaque_rdata_are_read_through_pointers():
    # The helper itself: "b" + pointer to "a" + pointer to the question's "test".
    names_at = 12 + len(question(GW, TYPE_A)) + 12
    names = b"\x01a\xc0\x0f" + b"\x01b" + struct.pack("!H", 0xC000 | names_at)
    assert records(decode_message(names_then_a_record(names, 4))) == [Record("b.a.test", TYPE_A, 5, "127.0.0.1")]


def test_backward_chain_that_loops_through_a_later_label_is_refused():
    # The owner at Q is "b" + pointer to P (backwards); P is "a" + pointer to Q, which
    # is after P: refused although the first pointer pointed backwards.
    names_at = 12 + len(question(GW, TYPE_A)) + 12
    p, q = names_at, names_at + 4
    names = b"\x01a" + struct.pack("!H", 0xC000 | q) + b"\x01b" + struct.pack("!H", 0xC000 | p)
    with pytest.raises(DnsFormatError, match="malformed DNS message: .*compression pointer"):
        decode_message(names_then_a_record(names, 4))


def test_name_longer_than_255_through_pointers_is_refused():
    # Each label of 63 octets points back to the previous one, the first to the
    # question's root octet: 5 * 64 + 1 > 255.
    names_at = 12 + len(question(GW, TYPE_A)) + 12
    chain = bytearray()
    prev = 12 + len(GW) - 1
    for _ in range(5):
        here = names_at + len(chain)
        chain += b"\x3f" + b"x" * 63 + struct.pack("!H", 0xC000 | prev)
        prev = here
    with pytest.raises(DnsFormatError, match="malformed DNS message: .*255"):
        decode_message(names_then_a_record(bytes(chain), prev - names_at))


def test_reserved_label_types_are_refused():
    with pytest.raises(DnsFormatError, match="malformed DNS message"):
        decode_message(header() + b"\x41x\x00\x00\x01\x00\x01")


@pytest.mark.parametrize("rtype, rdata", [
    (TYPE_A, b"\x01\x02\x03"),
    (TYPE_AAAA, b"\x00" * 4),
    (TYPE_SRV, b"\x00\x01\x00\x01\x13"),
    (TYPE_SRV, struct.pack("!HHH", 1, 1, 5060) + b"\x02gw\x00\x00"),
    (TYPE_CNAME, b"\x02gw\x00\x07"),
])
def test_record_data_that_does_not_fit_its_type(rtype, rdata):
    with pytest.raises(DnsFormatError, match="malformed DNS message"):
        decode_message(header(an=1) + question(GW, TYPE_A) + rr(b"\xc0\x0c", rtype, 5, rdata))


def test_rdlength_past_the_end():
    msg = header(an=1) + question(GW, TYPE_A) + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 40) + b"\x7f\x00\x00\x01"
    with pytest.raises(DnsFormatError, match="malformed DNS message"):
        decode_message(msg)


def full_srv_reply() -> bytes:
    q = question(SIP_GW, TYPE_SRV)
    return (header(an=2) + q
            + rr(b"\xc0\x0c", TYPE_SRV, 300, struct.pack("!HHH", 10, 1, 5071) + b"\x09localhost\x00")
            + rr(b"\xc0\x0c", TYPE_SRV, 300, struct.pack("!HHH", 20, 1, 5072) + b"\x09localhost\x00"))


def test_every_truncation_of_a_reply_raises_format_error():
    msg = full_srv_reply()
    assert len(records(decode_message(msg))) == 2
    for n in range(len(msg)):
        with pytest.raises(DnsFormatError):
            decode_message(msg[:n])


def test_random_garbage_and_mutations_raise_only_format_error():
    rng = random.Random(3263)
    base = full_srv_reply()
    for i in range(3000):
        if i % 2:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))
        else:
            data = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data)
        for decode in (decode_question, decode_message):
            try:
                message = decode(data)
            except DnsFormatError:
                continue
            records(message)  # what decoded reads without error
            answers_for(message, "_sip._udp.gw.test", TYPE_SRV)


def test_huge_counts_in_a_short_message_fail_fast():
    with pytest.raises(DnsFormatError):
        decode_message(header(qd=0xFFFF, an=0xFFFF, ns=0xFFFF, ar=0xFFFF) + question(GW, TYPE_A))
