#!/usr/bin/env python3
"""Writes vectors.json: test vectors for the cerberus socket protocol (PROTOCOL.md).

This is an encoder written from PROTOCOL.md alone, independent of the Rust codec, so
the Rust (and later Go) tests check their codecs against a second implementation.
Run from anywhere: python3 bouncer-api/testdata/gen_vectors.py
"""

import ipaddress
import json
import os
import struct

VERSION = 1
KIND = {"lookup_req": 0x01, "ping": 0x02, "lookup_resp": 0x81, "pong": 0x82, "error": 0xFF}
REMEDIATION = {"allow": 0, "ban": 1, "captcha": 2, "throttle": 3, "other": 4}
STATUS = {"ok": 0, "not_ready": 1}
ERROR_CODE = {
    "bad_version": 1,
    "bad_kind": 2,
    "bad_frame": 3,
    "bad_family": 4,
    "busy": 5,
    "internal": 6,
}
# Decoder error name -> error code a server answers with.
ERROR_NAME_CODE = {
    "bad_length": 3,
    "bad_version": 1,
    "bad_kind": 2,
    "truncated": 3,
    "trailing_bytes": 3,
    "bad_family": 4,
    "bad_utf8": 3,
    "bad_value": 3,
}
MAX_ORIGIN, MAX_SCENARIO, MAX_TYPE, MAX_MESSAGE = 255, 495, 255, 255


def frame(kind, ident, payload, version=VERSION):
    body = bytes([version, kind]) + struct.pack(">I", ident) + payload
    return struct.pack(">H", len(body)) + body


def cut(s, limit):
    b = s.encode("utf-8")
    if len(b) <= limit:
        return b
    b = b[:limit]
    while True:
        try:
            b.decode("utf-8")
            return b
        except UnicodeDecodeError:
            b = b[:-1]


def enc_request(d):
    if d["kind"] == "ping":
        return frame(KIND["ping"], d["id"], b"")
    addr = ipaddress.ip_address(d["addr"])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    fam = 4 if addr.version == 4 else 6
    return frame(KIND["lookup_req"], d["id"], bytes([fam]) + addr.packed)


def enc_response(d):
    if d["kind"] == "pong":
        return frame(KIND["pong"], d["id"], b"")
    if d["kind"] == "error":
        msg = cut(d["message"], MAX_MESSAGE)
        return frame(KIND["error"], d["id"], bytes([ERROR_CODE[d["code"]], len(msg)]) + msg)
    o = cut(d["origin"], MAX_ORIGIN)
    s = cut(d["scenario"], MAX_SCENARIO)
    t = cut(d["type"], MAX_TYPE)
    p = bytes([STATUS[d["status"]], REMEDIATION[d["remediation"]], d["flags"]])
    p += struct.pack(">I", d["expires_in_s"])
    p += bytes([len(o)]) + o + struct.pack(">H", len(s)) + s + bytes([len(t)]) + t
    return frame(KIND["lookup_resp"], d["id"], p)


def answer(ident, remediation, origin="", scenario="", typ="", expires=0, flags=0, status="ok"):
    return {
        "kind": "lookup",
        "id": ident,
        "status": status,
        "remediation": remediation,
        "flags": flags,
        "expires_in_s": expires,
        "origin": origin,
        "scenario": scenario,
        "type": typ,
    }


vectors = []


def valid(name, direction, decoded, encodes_from=(), wire=None, note=None):
    enc = enc_request if direction == "request" else enc_response
    canonical = enc(decoded)
    v = {"name": name, "direction": direction}
    if wire is not None and wire != canonical:
        v["hex"] = wire.hex()
        v["canonical_hex"] = canonical.hex()
    else:
        v["hex"] = canonical.hex()
    v["valid"] = True
    v["decoded"] = decoded
    alts = []
    for alt in encodes_from:
        assert enc(alt) == canonical, name
        alts.append(alt)
    if alts:
        v["encodes_from"] = alts
    if note:
        v["note"] = note
    vectors.append(v)


def invalid(name, direction, wire, error, ident=0, note=None):
    v = {"name": name, "direction": direction, "hex": wire.hex(), "valid": False, "error": error}
    if error != "incomplete":
        v["error_code"] = ERROR_NAME_CODE[error]
        v["error_id"] = ident
    if note:
        v["note"] = note
    vectors.append(v)


def lookup(ident, addr):
    return {"kind": "lookup", "id": ident, "addr": addr}


# ---------------------------------------------------------------- valid requests
valid("request_lookup_v4", "request", lookup(1, "192.0.2.1"))
valid("request_lookup_v4_zero_id_zero_addr", "request", lookup(0, "0.0.0.0"),
      note="id 0 is legal in a request (clients should avoid it, see PROTOCOL.md)")
valid("request_lookup_v4_max_id", "request", lookup(0xFFFFFFFF, "255.255.255.255"))
valid("request_lookup_v6", "request", lookup(0x01020304, "2001:db8::1"))
valid("request_lookup_v6_full", "request", lookup(77, "2001:db8:85a3:8d3:1319:8a2e:370:7348"))
valid("request_lookup_v6_loopback", "request", lookup(78, "::1"))
valid("request_lookup_v6_unspecified", "request", lookup(79, "::"))
valid("request_lookup_mapped_v6_sent_as_v4", "request", lookup(9, "203.0.113.7"),
      encodes_from=[lookup(9, "::ffff:203.0.113.7")],
      note="an IPv4-mapped IPv6 address is encoded as family 4")
valid("request_lookup_mapped_v6_on_wire", "request", lookup(10, "203.0.113.7"),
      wire=frame(0x01, 10, bytes([6]) + ipaddress.ip_address("::ffff:203.0.113.7").packed),
      note="a mapped address sent as family 6 is accepted and decoded as IPv4")
valid("request_ping", "request", {"kind": "ping", "id": 42})
valid("request_ping_max_id", "request", {"kind": "ping", "id": 0xFFFFFFFF})

# -------------------------------------------------------------- invalid requests
v4 = frame(0x01, 5, bytes([4, 192, 0, 2, 1]))
invalid("request_empty_input", "request", b"", "incomplete")
invalid("request_one_byte", "request", b"\x00", "incomplete")
invalid("request_header_only_prefix", "request", v4[:2], "incomplete",
        note="the length prefix is fine; the body has not arrived")
invalid("request_lookup_v4_missing_last_byte", "request", v4[:-1], "incomplete")
invalid("request_max_length_partial", "request", b"\x03\xfe" + bytes(10), "incomplete",
        note="1022 is the largest legal length; the decoder waits for the rest")
invalid("request_zero_length", "request", b"\x00\x00", "bad_length")
invalid("request_length_5", "request", b"\x00\x05\x01\x01\x00\x00\x00", "bad_length",
        note="shorter than the 6-byte header")
invalid("request_oversize_length_1023", "request", b"\x03\xff", "bad_length",
        note="rejected from the 2 prefix bytes alone, before any body arrives")
invalid("request_oversize_length_1024_with_body", "request", b"\x04\x00" + bytes(1024), "bad_length")
invalid("request_oversize_length_65535", "request", b"\xff\xff", "bad_length")
invalid("request_version_0", "request", frame(0x01, 5, bytes([4, 192, 0, 2, 1]), version=0),
        "bad_version", ident=5)
invalid("request_version_2", "request", frame(0x01, 6, bytes([4, 192, 0, 2, 1]), version=2),
        "bad_version", ident=6)
invalid("request_bad_version_checked_before_kind", "request", frame(0x77, 7, b"", version=9),
        "bad_version", ident=7)
invalid("request_kind_0", "request", frame(0x00, 8, b""), "bad_kind", ident=8)
invalid("request_kind_3", "request", frame(0x03, 8, b""), "bad_kind", ident=8)
invalid("request_kind_response_lookup", "request",
        enc_response(answer(8, "allow")), "bad_kind", ident=8,
        note="a response kind is not a request")
invalid("request_kind_error_frame", "request", frame(0xFF, 8, bytes([6, 0])), "bad_kind", ident=8)
invalid("request_family_0", "request", frame(0x01, 11, bytes([0, 1, 2, 3, 4])), "bad_family", ident=11)
invalid("request_family_5", "request", frame(0x01, 12, bytes([5, 1, 2, 3, 4])), "bad_family", ident=12)
invalid("request_family_checked_before_length", "request", frame(0x01, 13, bytes([41])),
        "bad_family", ident=13, note="family 41 with no address bytes: the family is checked first")
invalid("request_lookup_no_payload", "request", frame(0x01, 14, b""), "truncated", ident=14)
invalid("request_lookup_v4_3_bytes", "request", frame(0x01, 15, bytes([4, 10, 0, 0])), "truncated",
        ident=15)
invalid("request_lookup_v6_15_bytes", "request", frame(0x01, 16, bytes([6]) + bytes(15)),
        "truncated", ident=16)
invalid("request_lookup_v6_4_bytes", "request", frame(0x01, 17, bytes([6, 10, 0, 0, 1])),
        "truncated", ident=17, note="family 6 with an IPv4-sized address")
invalid("request_lookup_v4_trailing_byte", "request", frame(0x01, 18, bytes([4, 10, 0, 0, 1, 0])),
        "trailing_bytes", ident=18)
invalid("request_lookup_v4_16_bytes", "request", frame(0x01, 19, bytes([4]) + bytes(16)),
        "trailing_bytes", ident=19, note="family 4 with an IPv6-sized address")
invalid("request_lookup_v6_trailing_garbage", "request",
        frame(0x01, 20, bytes([6]) + bytes(16) + b"garbage"), "trailing_bytes", ident=20)
invalid("request_ping_with_payload", "request", frame(0x02, 21, b"\x00"), "trailing_bytes", ident=21)

# --------------------------------------------------------------- valid responses
valid("response_allow", "response", answer(1, "allow"))
valid("response_ban", "response",
      answer(2, "ban", "crowdsec", "crowdsecurity/ssh-bf", "ban", expires=14400))
valid("response_captcha", "response",
      answer(3, "captcha", "CAPI", "crowdsecurity/http-probing", "captcha", expires=86399))
valid("response_throttle", "response",
      answer(4, "throttle", "cscli", "manual 'throttle' from 'localhost'", "throttle", expires=60))
valid("response_other", "response",
      answer(5, "other", "lists", "firehol_l1", "mfa", expires=3600),
      note="remediation other: the raw decision type is in type")
valid("response_bypassed", "response", answer(6, "allow", flags=1),
      note="protection disabled")
valid("response_fail_closed", "response", answer(7, "ban", typ="ban", flags=2),
      note="LAPI unreachable, on_lapi_unreachable=closed")
valid("response_unknown_flag_bits_kept", "response", answer(8, "ban", "crowdsec", "x", "ban", 1, flags=0xFD),
      note="reserved flag bits are ignored by receivers and kept by this decoder")
valid("response_not_ready", "response", answer(9, "allow", status="not_ready"))
valid("response_max_expiry_and_id", "response",
      answer(0xFFFFFFFF, "ban", "crowdsec", "crowdsecurity/http-cve", "ban", expires=0xFFFFFFFF))
valid("response_utf8_strings", "response",
      answer(10, "ban", "cscli-ü", "manuel: scénario ✓ 日本", "ban", expires=5))
valid("response_strings_at_limit", "response",
      answer(11, "ban", "o" * 255, "s" * 495, "t" * 255, expires=1),
      note="the largest lookup answer: exactly 1024 bytes")
valid("response_long_strings_truncated", "response",
      answer(12, "ban", "o" * 255, "s" * 495, "t" * 255, expires=1),
      encodes_from=[answer(12, "ban", "o" * 300, "s" * 600, "t" * 256, expires=1)],
      note="encoders cut strings to 255/495/255 bytes")
valid("response_long_strings_truncated_at_utf8_boundary", "response",
      answer(13, "captcha", "é" * 127, "€" * 165, "ü" * 127, expires=2),
      encodes_from=[answer(13, "captcha", "é" * 200, "€" * 200, "ü" * 130, expires=2)],
      note="cut at the last character boundary at or before the limit: 254/495/254 bytes")
valid("response_pong", "response", {"kind": "pong", "id": 7})
for i, (code, msg) in enumerate([
    ("bad_version", "unsupported protocol version"),
    ("bad_kind", "unknown request kind"),
    ("bad_frame", "truncated payload"),
    ("bad_family", "address family must be 4 or 6"),
    ("busy", "server busy"),
    ("internal", "internal error"),
]):
    valid("response_error_" + code, "response", {"kind": "error", "id": 100 + i, "code": code, "message": msg})
valid("response_error_connection_level", "response",
      {"kind": "error", "id": 0, "code": "busy", "message": "too many connections"},
      note="id 0: not about one request; the server closes the connection")
valid("response_error_empty_message", "response",
      {"kind": "error", "id": 110, "code": "internal", "message": ""})
valid("response_error_long_message_truncated", "response",
      {"kind": "error", "id": 111, "code": "internal", "message": "m" * 255},
      encodes_from=[{"kind": "error", "id": 111, "code": "internal", "message": "m" * 400}])

# ------------------------------------------------------------- invalid responses
ban = enc_response(answer(30, "ban", "crowdsec", "crowdsecurity/ssh-bf", "ban", expires=60))
invalid("response_empty_input", "response", b"", "incomplete")
invalid("response_partial", "response", ban[:-3], "incomplete")
invalid("response_zero_length", "response", b"\x00\x00", "bad_length")
invalid("response_oversize_length_1023", "response", b"\x03\xff", "bad_length")
invalid("response_version_2", "response", frame(0x82, 31, b"", version=2), "bad_version", ident=31)
invalid("response_kind_request_lookup", "response", frame(0x01, 32, bytes([4, 1, 2, 3, 4])),
        "bad_kind", ident=32, note="a request kind is not a response")
invalid("response_kind_0x80", "response", frame(0x80, 33, b""), "bad_kind", ident=33)
invalid("response_status_2", "response",
        frame(0x81, 34, bytes([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])), "bad_value", ident=34)
invalid("response_remediation_5", "response",
        frame(0x81, 35, bytes([0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0])), "bad_value", ident=35)
invalid("response_answer_empty_payload", "response", frame(0x81, 36, b""), "truncated", ident=36)
invalid("response_answer_missing_type_length", "response",
        frame(0x81, 37, bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0])), "truncated", ident=37)
invalid("response_scenario_length_past_end", "response",
        frame(0x81, 38, bytes([0, 1, 0, 0, 0, 0, 60, 0, 0, 200]) + b"abc"), "truncated", ident=38)
invalid("response_answer_trailing_byte", "response",
        frame(0x81, 39, bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x2A])), "trailing_bytes",
        ident=39)
invalid("response_origin_bad_utf8", "response",
        frame(0x81, 40, bytes([0, 1, 0, 0, 0, 0, 1, 2, 0xC3, 0x28, 0, 0, 0])), "bad_utf8", ident=40)
invalid("response_type_bad_utf8", "response",
        frame(0x81, 41, bytes([0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0xFF])), "bad_utf8", ident=41)
invalid("response_pong_with_payload", "response", frame(0x82, 42, b"\x00"), "trailing_bytes", ident=42)
invalid("response_error_code_0", "response", frame(0xFF, 43, bytes([0, 0])), "bad_value", ident=43)
invalid("response_error_code_7", "response", frame(0xFF, 44, bytes([7, 0])), "bad_value", ident=44)
invalid("response_error_message_truncated", "response", frame(0xFF, 45, bytes([6, 10]) + b"abc"),
        "truncated", ident=45)
invalid("response_error_no_payload", "response", frame(0xFF, 46, b""), "truncated", ident=46)
invalid("response_error_trailing_bytes", "response", frame(0xFF, 47, bytes([5, 1]) + b"ab"),
        "trailing_bytes", ident=47)

names = [v["name"] for v in vectors]
assert len(names) == len(set(names)), "duplicate vector names"

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.json")
with open(out, "w", encoding="utf-8") as f:
    json.dump({"protocol_version": VERSION, "vectors": vectors}, f, indent=1, ensure_ascii=False)
    f.write("\n")
print(f"wrote {len(vectors)} vectors to {out}")
