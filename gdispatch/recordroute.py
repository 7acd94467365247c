"""What this proxy writes in Record-Route, and which Route it lets a request follow.

A request inside a dialog carries in its Route the Record-Route entry this proxy wrote
when the dialog was created (RFC 3261 §16.6 step 4, §12.1), and goes where its Request-URI
or its next Route points (§16.4, §16.12). A proxy that follows any Route naming it is a
relay for anybody: a forged BYE or re-INVITE with a To tag and that Route would leave
towards whatever host it names, from an address the gateways trust. So the entry this
proxy writes is signed, ``<sip:IP:PORT;lr;gds=KID.MAC>``, and only a signed entry opens
the way back:

- MAC is a keyed BLAKE2s (80 bits, in hex) over the Call-ID, the caller's tag and,
  unless ``[security] dialog_next_hop = "any"``, the address of the destination the
  dialog was sent to. The caller's tag is the From tag of the request that created the
  dialog: the only tag that exists when the entry is written; the caller's later
  requests carry it as their From tag, the callee's as their To tag.
- KID names the key. The first key of the key file signs, every key in it verifies, so a
  key is rotated by putting a new one first and dropping the old one once the calls it
  signed are over; workers, restarts and any node given the same file verify alike.

The rule for a request that comes back with such an entry (`check`):

- from the caller (its From tag is the signed tag), it goes only to the dialog's
  destination: the MAC must match with the address of the next hop;
- from the callee (its To tag is the signed tag), it must come from the dialog's
  destination: the MAC must match with the address it came from; it goes to the caller,
  wherever the caller's Contact or Record-Route says;
- with ``dialog_next_hop = "any"`` the dialog must be ours, the next hop is free (an
  entry signed with an address still verifies, in either direction).

Anything else is refused by the proxy (403) and never leaves.

What lives elsewhere: where the entry is written and popped (gdispatch.proxy), the
setting that names the key file (gdispatch.config).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import stat
import tempfile
from binascii import Error as BinasciiError
from binascii import hexlify, unhexlify
from collections.abc import Mapping
from hmac import compare_digest
from typing import Any

PARAM = "gds"  # the URI parameter of the signature
MAC_BYTES = 10  # 80 bits: 20 hex digits
KEY_BYTES = 32  # a new key's length
MIN_KEY_BYTES = 16
KEY_FILE_NAME = "dialog.key"
SYSTEM_STATE_DIR = "/var/lib/gdispatch"
_KID = re.compile(r"[A-Za-z0-9_-]{1,16}\Z")
_HEX = re.compile(r"[0-9A-Fa-f]+\Z")


class KeyFileError(ValueError):
    """A key file that cannot be used, worded for the operator."""


class Keyring:
    """The keys that sign and verify: (key id, secret) pairs, the first one signs."""

    def __init__(self, keys: list[tuple[str, bytes]]):
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self.keys = list(keys)
        self.signing_id = keys[0][0].encode()
        # A keyed hash per key, copied for each MAC: keying it again each time costs twice.
        self._by_id = {kid.encode(): hashlib.blake2s(key=secret, digest_size=MAC_BYTES) for kid, secret in keys}
        self._signing = self._by_id[self.signing_id]

    @classmethod
    def ephemeral(cls) -> Keyring:
        """A random key that lives as long as the process (for a proxy given none)."""
        return cls([("tmp", secrets.token_bytes(KEY_BYTES))])

    def token(self, call_id: bytes, caller_tag: bytes, address: bytes) -> bytes:
        """The signature of a new dialog, ``KID.MAC``."""
        h = self._signing.copy()
        h.update(b"%s\x00%s\x00%s" % (call_id, caller_tag, address))
        return self.signing_id + b"." + hexlify(h.digest())

    def signer(self, token: bytes) -> tuple[Any, bytes] | None:
        """The keyed hash and the MAC of `token`; None when its key id is not one of ours
        (unknown, or retired) or it is not ``KID.MAC``."""
        kid, _, mac = token.partition(b".")
        keyed = self._by_id.get(kid)
        if keyed is None:
            return None
        try:
            return keyed, unhexlify(mac)
        except (ValueError, BinasciiError):
            return None


_PACKED: dict[str, bytes] = {}  # IP text -> its packed form, bounded: addresses repeat


def packed_address(ip: str) -> bytes:
    """The address in its packed form (one spelling per address: `::1` and `0::1` sign
    alike); b"" for what is not an IP address."""
    packed = _PACKED.get(ip)
    if packed is not None:
        return packed
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    except OSError:
        packed = b""
    if len(_PACKED) < 4096:
        _PACKED[ip] = packed
    return packed


def check(ring: Keyring, token: bytes | None, call_id: bytes, from_tag: bytes | None, to_tag: bytes | None,
          source_ip: str, next_hop_ip: str, bind: bool = True) -> str:
    """'' when a request inside a dialog may follow the Route entry signed `token` to
    `next_hop_ip`; else why not (for the log and the counters). `bind`: the rule
    "destination" (see the module's docstring); False is "any".

    Every request of every dialog comes here: the MACs are computed inline, the caller's
    direction (the usual one: ACK, BYE, re-INVITE from the caller) first."""
    if not token:
        return "no signature in our Route entry"
    signed = ring.signer(token)
    if signed is None:
        return "unknown key id"
    keyed, mac = signed
    from_tag = from_tag or b""
    # An address that is not an IP packs to b"", which only an entry signed without an
    # address matches: never under the rule "destination".
    downstream = _PACKED.get(next_hop_ip) or packed_address(next_hop_ip) or (b"?" if bind else b"")
    h = keyed.copy()
    h.update(b"%s\x00%s\x00%s" % (call_id, from_tag, downstream))
    if compare_digest(h.digest(), mac):
        return ""
    tried = [(from_tag, b"")] if not bind else []
    if to_tag:
        upstream = _PACKED.get(source_ip) or packed_address(source_ip) or (b"?" if bind else b"")
        tried[:0] = [(to_tag, upstream)]
        if not bind:
            tried.append((to_tag, b""))
    for tag, address in tried:
        h = keyed.copy()
        h.update(b"%s\x00%s\x00%s" % (call_id, tag, address))
        if compare_digest(h.digest(), mac):
            return ""
    return "signature does not match the dialog and its destination"


# -- the key file ---------------------------------------------------------------------------


def default_key_path(env: Mapping[str, str] | None = None) -> str:
    """Where the key file is when the configuration names none: ``$STATE_DIRECTORY``
    (systemd's StateDirectory=), else /var/lib/gdispatch when writable or creatable,
    else ``$XDG_STATE_HOME/gdispatch`` (~/.local/state/gdispatch)."""
    env = os.environ if env is None else env
    given = env.get("STATE_DIRECTORY", "")
    if given:
        return os.path.join(given.split(":")[0], KEY_FILE_NAME)
    if os.path.isdir(SYSTEM_STATE_DIR):
        if os.access(SYSTEM_STATE_DIR, os.W_OK | os.X_OK):
            return os.path.join(SYSTEM_STATE_DIR, KEY_FILE_NAME)
    elif os.access(os.path.dirname(SYSTEM_STATE_DIR), os.W_OK | os.X_OK):
        return os.path.join(SYSTEM_STATE_DIR, KEY_FILE_NAME)
    home = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(home, "gdispatch", KEY_FILE_NAME)


def parse_keys(text: str, path: str = "<keys>") -> Keyring:
    """A key file: one key per line, ``KEY_ID SECRET`` (the secret in hex, 16 bytes or
    more), ``#`` comments; the first key signs. Errors name ``path:line``."""
    keys: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KeyFileError(f"{path}:{n}: expected 'KEY_ID SECRET', got {len(parts)} fields")
        kid, secret = parts
        if not _KID.match(kid):
            raise KeyFileError(f"{path}:{n}: key id {kid!r}: 1-16 letters, digits, '-' or '_'")
        if kid in seen:
            raise KeyFileError(f"{path}:{n}: key id {kid!r} appears twice")
        if not _HEX.match(secret) or len(secret) % 2 or len(secret) < 2 * MIN_KEY_BYTES:
            raise KeyFileError(f"{path}:{n}: the secret of {kid!r} must be hex, {MIN_KEY_BYTES} bytes "
                               f"({2 * MIN_KEY_BYTES} hex digits) or more")
        seen.add(kid)
        keys.append((kid, bytes.fromhex(secret)))
    if not keys:
        raise KeyFileError(f"{path}: no key in the file")
    return Keyring(keys)


def load_keys(path: str) -> Keyring:
    """Read the key file, refusing one that others than its owner may read or write."""
    try:
        with open(path, encoding="ascii") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read the key file: {e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: the key file is open to other users (mode {stat.S_IMODE(mode):04o}); "
                           f"make it readable by its owner only: chmod 600 {path}")
    return parse_keys(text, path)


def new_key_line() -> str:
    """A line for the key file with a new random key and key id."""
    return f"{secrets.token_hex(3)} {secrets.token_hex(KEY_BYTES)}\n"


_HEADER = ("# gdispatch: the keys that sign the Record-Route of new dialogs, one per line:\n"
           "# KEY_ID SECRET (hex). The first key signs; every key here verifies.\n")


def ensure_key_file(path: str) -> Keyring:
    """Load the key file, first creating it (mode 0600, in a directory made 0700) with a
    new key when there is none. Two processes starting at once end with the same key."""
    if not os.path.exists(path):
        directory = os.path.dirname(path) or "."
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".dialog-key-", dir=directory)  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="ascii") as f:
                    f.write(_HEADER + new_key_line())
                os.link(tmp, path)  # fails if another process made it meanwhile: then use that one
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise KeyFileError(f"{path}: cannot create the key file: {e.strerror or e}") from None
    return load_keys(path)


def add_key(path: str) -> str:
    """Put a new signing key first in the key file (created with it if missing), keeping
    the others so that dialogs they signed go on; returns the new key id."""
    if not os.path.exists(path):
        return ensure_key_file(path).signing_id.decode()
    load_keys(path)  # a file that does not load is not written to
    with open(path, encoding="ascii") as f:
        old = f.read()
    line = new_key_line()
    lines = old.splitlines(keepends=True)
    at = 0
    while at < len(lines) and lines[at].lstrip().startswith("#"):
        at += 1
    text = "".join(lines[:at]) + line + "".join(lines[at:])
    parse_keys(text, path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".dialog-key-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return line.split()[0]
