"""The signature of our Record-Route and the rule for what comes back (gdispatch.recordroute):
keys, key files, and `check` for each direction of a dialog."""

from __future__ import annotations

import os
import stat

import pytest

from gdispatch.recordroute import (
    KeyFileError,
    Keyring,
    add_key,
    check,
    default_key_path,
    ensure_key_file,
    load_keys,
    packed_address,
    parse_keys,
)

RING = Keyring([("k2", b"\x02" * 32), ("k1", b"\x01" * 32)])
CALL = b"a84b4c76e66710@pc33.example.com"
CALLER_TAG = b"1928301774"
CALLEE_TAG = b"a6c85cf"
GATEWAY = "192.0.2.10"
CALLER = "198.51.100.7"


def signed(ring: Keyring = RING, address: str = GATEWAY) -> bytes:
    return ring.token(CALL, CALLER_TAG, packed_address(address) if address else b"")


def test_a_request_from_the_caller_goes_to_the_dialogs_destination_only():
    token = signed()
    assert check(RING, token, CALL, CALLER_TAG, CALLEE_TAG, CALLER, GATEWAY) == ""
    assert check(RING, token, CALL, CALLER_TAG, CALLEE_TAG, CALLER, "127.0.0.5") != ""


def test_a_request_from_the_callee_must_come_from_the_dialogs_destination():
    token = signed()
    # The callee's requests carry the caller's tag as their To tag; they go to the caller.
    assert check(RING, token, CALL, CALLEE_TAG, CALLER_TAG, GATEWAY, CALLER) == ""
    assert check(RING, token, CALL, CALLEE_TAG, CALLER_TAG, "203.0.113.9", CALLER) != ""


def test_tags_swapped_by_the_caller_do_not_open_the_way():
    """The caller poses as the callee (its tag in To) to send the request anywhere."""
    token = signed()
    assert check(RING, token, CALL, b"anything", CALLER_TAG, CALLER, "127.0.0.5") != ""


@pytest.mark.parametrize("token", [
    None, b"", b"k2", b"k2.", b"k9." + signed().split(b".")[1], b"k2.0000000000000000000",
    signed()[:-1] + (b"0" if signed()[-1:] != b"0" else b"1"),
])
def test_forged_or_tampered_signatures_are_refused(token):
    assert check(RING, token, CALL, CALLER_TAG, CALLEE_TAG, CALLER, GATEWAY) != ""


def test_another_dialog_or_tag_is_refused():
    token = signed()
    assert check(RING, token, CALL + b"x", CALLER_TAG, CALLEE_TAG, CALLER, GATEWAY) != ""
    assert check(RING, token, CALL, CALLER_TAG + b"x", CALLEE_TAG, CALLER, GATEWAY) != ""


def test_an_unknown_key_id_says_so():
    other = Keyring([("k7", b"\x07" * 32)])
    assert check(RING, signed(other), CALL, CALLER_TAG, None, CALLER, GATEWAY) == "unknown key id"


def test_a_retired_key_stops_verifying_a_kept_one_goes_on():
    old = Keyring([("k1", b"\x01" * 32)])
    token = signed(old)
    assert check(RING, token, CALL, CALLER_TAG, None, CALLER, GATEWAY) == ""  # k1 still in the ring
    assert check(Keyring([("k2", b"\x02" * 32)]), token, CALL, CALLER_TAG, None, CALLER, GATEWAY) != ""
    assert signed().startswith(b"k2.")  # the first key signs


def test_rule_any_frees_the_next_hop_but_not_the_dialog():
    token = signed(address="")
    assert check(RING, token, CALL, CALLER_TAG, None, CALLER, "127.0.0.5", bind=False) == ""
    assert check(RING, token, CALL, CALLER_TAG, None, CALLER, "127.0.0.5", bind=True) != ""
    assert check(RING, token, CALL + b"x", CALLER_TAG, None, CALLER, "127.0.0.5", bind=False) != ""
    # A dialog signed under "destination" still verifies after a switch to "any".
    assert check(RING, signed(), CALL, CALLER_TAG, None, CALLER, GATEWAY, bind=False) == ""


def test_one_address_one_spelling():
    assert packed_address("::1") == packed_address("0:0::1") and packed_address("::1")
    assert packed_address("gw.example.com") == b""
    token = RING.token(CALL, CALLER_TAG, packed_address("2001:db8::1"))
    assert check(RING, token, CALL, CALLER_TAG, None, CALLER, "2001:db8:0::1") == ""


def test_a_name_as_next_hop_never_matches_under_rule_destination():
    token = signed(address="")
    assert check(RING, token, CALL, CALLER_TAG, None, CALLER, "gw.example.com") != ""


def test_the_signature_is_the_same_in_every_process():
    assert signed() == Keyring([("k2", b"\x02" * 32)]).token(CALL, CALLER_TAG, packed_address(GATEWAY))


# -- key files ----------------------------------------------------------------------------------


def test_parse_keys_first_key_signs_every_key_verifies():
    ring = parse_keys("# comment\nnew " + "ab" * 16 + "  # the new one\n\nold " + "cd" * 32 + "\n")
    assert ring.signing_id == b"new" and [k for k, _ in ring.keys] == ["new", "old"]


@pytest.mark.parametrize("text, error", [
    ("", "no key"),
    ("k1\n", "expected 'KEY_ID SECRET'"),
    ("k1 " + "ab" * 8 + "\n", "16 bytes"),
    ("k1 " + "zz" * 16 + "\n", "must be hex"),
    ("k/1 " + "ab" * 16 + "\n", "key id"),
    ("k1 " + "ab" * 16 + "\nk1 " + "cd" * 16 + "\n", "appears twice"),
])
def test_bad_key_files_name_file_and_line(text, error):
    with pytest.raises(KeyFileError, match=error):
        parse_keys(text, "keys")


def test_a_new_key_file_is_made_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "state" / "dialog.key"
    ring = ensure_key_file(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_key_file(str(path)).keys == ring.keys  # made once, then read


def test_a_key_file_open_to_others_is_refused(tmp_path):
    path = tmp_path / "dialog.key"
    path.write_text("k1 " + "ab" * 16 + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keys(str(path))


def test_add_key_puts_a_new_signing_key_first_and_keeps_the_others(tmp_path):
    path = str(tmp_path / "dialog.key")
    first = ensure_key_file(path)
    kid = add_key(path)
    ring = load_keys(path)
    assert ring.signing_id == kid.encode()
    assert [k for k, _ in ring.keys][1:] == [k for k, _ in first.keys]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_default_key_path_follows_systemd_then_var_lib_then_home():
    assert default_key_path({"STATE_DIRECTORY": "/var/lib/x:/other"}) == "/var/lib/x/dialog.key"
    path = default_key_path({"XDG_STATE_HOME": "/nonexistent-state"})
    assert path.endswith("/dialog.key")


def test_the_key_command_adds_and_shows_keys(tmp_path, capsys):
    from gdispatch.cli import main

    key = tmp_path / "dialog.key"
    config = tmp_path / "gdispatch.toml"
    config.write_text('[security]\nkey_file = "dialog.key"\n')
    assert main(["key", "add", "--config", str(config)]) == 0
    assert main(["key", "add", "--config", str(config)]) == 0
    ring = load_keys(str(key))
    assert len(ring.keys) == 2
    capsys.readouterr()
    assert main(["key", "show", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"signing key {ring.signing_id.decode()}" in out and ring.keys[0][1].hex() not in out
    os.chmod(key, 0o640)
    assert main(["key", "show", "--config", str(config)]) == 1
