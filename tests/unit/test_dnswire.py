"""The DNS wire codec with hand-built messages: queries, answers, compression, and
malformed input that must raise DnsFormatError rather than crash or loop."""

from __future__ import annotations

import random
import struct

import pytest

from gdispatch.dnswire import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_SRV,
    DnsFormatError,
    Question,
    SrvData,
    answers_for,
    decode_header,
    decode_message,
    encode_name,
    encode_query,
    read_name,
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
    assert (m.id, m.is_response, m.questions) == (7, False, (Question("_sip._udp.gw.test", TYPE_SRV),))


def test_query_id_must_fit_16_bits():
    with pytest.raises(ValueError):
        encode_query(0x10000, "gw.test", TYPE_A)


@pytest.mark.parametrize("name", ["", "."])
def test_root_name_is_one_zero_octet(name):
    assert encode_name(name) == b"\x00"


def test_final_dot_is_optional():
    assert encode_name("gw.test.") == encode_name("gw.test") == GW


@pytest.mark.parametrize("name, why", [
    ("a..b", "empty label"),
    ("x" * 64 + ".test", "longer than 63"),
    (".".join(["x" * 63] * 4), "longer than 255"),
    ("gw.tést", "not ASCII"),
])
def test_names_that_cannot_be_encoded(name, why):
    with pytest.raises(DnsFormatError, match=why):
        encode_name(name)


def test_longest_name_is_accepted():
    name = ".".join(["x" * 63] * 3 + ["x" * 61])  # 4 * 64 - 2 + 1 = 255 octets
    assert len(encode_name(name)) == 255


# -- answers ----------------------------------------------------------------------------


def test_a_and_aaaa_answers_with_ttls():
    msg = (header(an=2) + question(GW, TYPE_A)
           + rr(b"\xc0\x0c", TYPE_A, 300, bytes([192, 0, 2, 7]))
           + rr(b"\xc0\x0c", TYPE_AAAA, 60, bytes.fromhex("20010db8000000000000000000000001")))
    m = decode_message(msg)
    assert m.is_response and m.rcode == 0 and not m.truncated and m.rcode_name() == "NOERROR"
    assert [(r.name, r.rtype, r.ttl, r.data) for r in m.answers] == [
        ("gw.test", TYPE_A, 300, "192.0.2.7"),
        ("gw.test", TYPE_AAAA, 60, "2001:db8::1"),
    ]


def test_ttl_with_top_bit_set_counts_as_zero():
    msg = header(an=1) + question(GW, TYPE_A) + rr(b"\xc0\x0c", TYPE_A, 0x80000001, b"\x7f\x00\x00\x01")
    assert decode_message(msg).answers[0].ttl == 0


def test_header_flags_rcode_and_truncation():
    m = decode_message(header(flags=0x8183, an=0) + question(GW, TYPE_A))
    assert m.rcode == 3 and m.rcode_name() == "NXDOMAIN" and m.truncated is False
    m = decode_message(header(flags=0x8180 | 0x0200) + question(GW, TYPE_A))
    assert m.truncated and m.opcode == 0
    assert decode_message(header(flags=0x800B) + question(GW, TYPE_A)).rcode_name() == "RCODE11"


def test_srv_answers_with_compressed_owner_and_target():
    # The second target points at the first one's "localhost" label (offset 12 + len
    # question + first record's fixed part + 6 octets of SRV numbers).
    q = question(SIP_GW, TYPE_SRV)
    first = rr(b"\xc0\x0c", TYPE_SRV, 300, struct.pack("!HHH", 10, 60, 5071) + b"\x09localhost\x00")
    target_at = 12 + len(q) + 2 + 10 + 6
    pointer = struct.pack("!H", 0xC000 | target_at)
    second = rr(b"\xc0\x0c", TYPE_SRV, 120, struct.pack("!HHH", 20, 0, 5072) + b"\x03gw2" + pointer)
    m = decode_message(header(an=2) + q + first + second)
    assert m.questions == (Question("_sip._udp.gw.test", TYPE_SRV),)
    assert [(r.name, r.ttl, r.data) for r in m.answers] == [
        ("_sip._udp.gw.test", 300, SrvData(10, 60, 5071, "localhost")),
        ("_sip._udp.gw.test", 120, SrvData(20, 0, 5072, "gw2.localhost")),
    ]


def test_names_are_lowercased_and_odd_octets_escaped():
    odd = b"\x03a.b\x02\x00Z\x04TEST\x00"
    m = decode_message(header(an=0) + question(odd, TYPE_A))
    assert m.questions[0].name == "a\\046b.\\000z.test"


def test_unknown_types_and_classes_keep_raw_rdata():
    msg = (header(an=2) + question(GW, TYPE_A)
           + rr(b"\xc0\x0c", 16, 5, b"\x03txt")  # TXT
           + rr(b"\xc0\x0c", TYPE_A, 5, b"\x01\x02\x03\x04", rclass=3))  # class CH
    assert [r.data for r in decode_message(msg).answers] == [b"\x03txt", b"\x01\x02\x03\x04"]


def test_authority_and_additional_sections_are_decoded():
    soa = b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 3600, 4) + b"\x00\x00\x00\x00"
    extra = rr(b"\x09localhost\x00", TYPE_A, 10, b"\x7f\x00\x00\x01")
    m = decode_message(header(flags=0x8183, ns=1, ar=1) + question(SIP_GW, TYPE_SRV) + soa + extra)
    assert [r.rtype for r in m.authority] == [6] and m.additional[0].data == "127.0.0.1"


def test_trailing_padding_is_ignored():
    assert decode_message(header(an=0) + question(GW, TYPE_A) + b"\x00" * 5).questions[0].name == "gw.test"


def test_answers_for_follows_a_cname_chain_in_the_answer_section():
    msg = (header(an=3) + question(GW, TYPE_A)
           + rr(b"\xc0\x0c", TYPE_CNAME, 30, b"\x05alias\xc0\x0f")  # alias.test
           + rr(b"\x05alias\x04test\x00", TYPE_CNAME, 30, b"\x04real\xc0\x0f")
           + rr(b"\x04real\xc0\x0f", TYPE_A, 30, b"\x7f\x00\x00\x05"))
    m = decode_message(msg)
    records, end = answers_for(m, "GW.test.", TYPE_A)
    assert [r.data for r in records] == ["127.0.0.5"] and end == "real.test"


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
    with pytest.raises(DnsFormatError, match="shorter than a DNS header"):
        decode_header(b"\x12\x34\x81")


def test_pointer_to_itself_is_refused():
    with pytest.raises(DnsFormatError, match="does not point backwards"):
        decode_message(header() + b"\xc0\x0c" + b"\x00\x01\x00\x01")


def test_two_pointers_pointing_at_each_other_are_refused():
    # offset 12: pointer to 14; offset 14: pointer to 12 (a forward pointer, then a cycle)
    with pytest.raises(DnsFormatError, match="does not point backwards"):
        decode_message(header(qd=1, an=1) + b"\x01a\xc0\x0e" + b"\x00\x01\x00\x01" + b"\xc0\x0c" + b"\x00" * 10)


def test_a_pointer_into_the_name_being_read_is_refused():
    # "a" then a pointer back to the start of the same name: a loop RFC 1035 forbids.
    with pytest.raises(DnsFormatError, match="does not point backwards"):
        read_name(b"\x00" * 12 + b"\x01a\xc0\x0c", 12)


def test_backward_chain_that_loops_through_a_later_label_is_refused():
    # 12: "a" + ptr→20; 20 is after 12 → refused even though it is below the pointer.
    data = b"\x00" * 12 + b"\x01a\xc0\x14" + b"\x00" * 4 + b"\x01b\xc0\x0c"
    with pytest.raises(DnsFormatError):
        read_name(data, 20)


def test_name_longer_than_255_through_pointers_is_refused():
    # Each label of 63 octets points back to the previous one: 5 * 64 > 255.
    data = bytearray(b"\x00" * 12 + b"\x00")  # offset 12: root
    prev = 12
    for _ in range(5):
        here = len(data)
        data += b"\x3f" + b"x" * 63 + struct.pack("!H", 0xC000 | prev)
        prev = here
    with pytest.raises(DnsFormatError, match="longer than 255"):
        read_name(bytes(data), prev)


def test_reserved_label_types_are_refused():
    with pytest.raises(DnsFormatError, match="unsupported label type 0x40"):
        decode_message(header() + b"\x41x\x00\x00\x01\x00\x01")


@pytest.mark.parametrize("rtype, rdata, why", [
    (TYPE_A, b"\x01\x02\x03", "A record with 3 octets"),
    (TYPE_AAAA, b"\x00" * 4, "AAAA record with 4 octets"),
    (TYPE_SRV, b"\x00\x01\x00\x01\x13", "SRV record with 5 octets"),
    (TYPE_SRV, struct.pack("!HHH", 1, 1, 5060) + b"\x02gw\x00\x00", "does not match its name"),
    (TYPE_CNAME, b"\x02gw\x00\x07", "does not match its name"),
])
def test_record_data_that_does_not_fit_its_type(rtype, rdata, why):
    with pytest.raises(DnsFormatError, match=why):
        decode_message(header(an=1) + question(GW, TYPE_A) + rr(b"\xc0\x0c", rtype, 5, rdata))


def test_rdlength_past_the_end():
    msg = header(an=1) + question(GW, TYPE_A) + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 40) + b"\x7f\x00\x00\x01"
    with pytest.raises(DnsFormatError, match="runs past the end"):
        decode_message(msg)


def full_srv_reply() -> bytes:
    q = question(SIP_GW, TYPE_SRV)
    return (header(an=2) + q
            + rr(b"\xc0\x0c", TYPE_SRV, 300, struct.pack("!HHH", 10, 1, 5071) + b"\x09localhost\x00")
            + rr(b"\xc0\x0c", TYPE_SRV, 300, struct.pack("!HHH", 20, 1, 5072) + b"\x09localhost\x00"))


def test_every_truncation_of_a_reply_raises_format_error():
    msg = full_srv_reply()
    assert len(decode_message(msg).answers) == 2
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
        try:
            decode_message(data)
        except DnsFormatError:
            pass


def test_huge_counts_in_a_short_message_fail_fast():
    with pytest.raises(DnsFormatError):
        decode_message(header(qd=0xFFFF, an=0xFFFF, ns=0xFFFF, ar=0xFFFF) + question(GW, TYPE_A))
