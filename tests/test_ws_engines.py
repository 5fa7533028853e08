"""The two WebSocket engines, sans I/O: bytes in, neutral events out, on both libraries.

Frames are built by hand here (not by a client library) so that malformed
ones — unmasked, bad opcode, oversized control frames, broken UTF-8 — can be
sent exactly.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import zlib

import pytest

from server_core.state import RequestHead
from server_core.websocket import engine_factory
from server_core.websocket.events import (
    Bytes,
    Close,
    Engine,
    HandshakeError,
    Pong,
    ProtocolError,
    Text,
    sendable_close_code,
    truncate_reason,
)
from server_core.websocket.handshake import DenialResponse, check_request, offered_subprotocols

ENGINES = ["websockets", "wsproto"]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = base64.b64encode(b"0123456789abcdef")

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def request_head(*extra: tuple[bytes, bytes], method: str = "GET", version: str = "1.1",
                 key: bytes = KEY, ws_version: bytes = b"13") -> RequestHead:
    headers = [
        (b"host", b"example.com"),
        (b"connection", b"Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", key),
        (b"sec-websocket-version", ws_version),
        *extra,
    ]
    return RequestHead(method=method, raw_path=b"/chat", path="/chat", query_string=b"",
                       http_version=version, headers=headers, keep_alive=True, upgrade=b"websocket")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv1: bool = False) -> bytes:
    """One client frame, built by hand (RFC 6455 section 5.2)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head = bytes([first, mask_bit | length])
    elif length < 65536:
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def server_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """Parse the server's (unmasked) frames: (opcode, fin, payload)."""
    frames = []
    while data:
        first, second = data[0], data[1]
        assert not second & 0x80, "a server must not mask its frames"
        length, offset = second & 0x7F, 2
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, offset = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((first & 0x0F, bool(first & 0x80), data[offset:offset + length]))
        data = data[offset + length:]
    return frames


def make(name: str, *extra: tuple[bytes, bytes], max_size: int | None = 1 << 20,
         deflate: bool = False, subprotocol: str | None = None) -> tuple[Engine, bytes]:
    engine = engine_factory(name)(request_head(*extra), max_size=max_size, per_message_deflate=deflate)
    return engine, engine.accept(subprotocol, [(b"server", b"corral")])


def response_headers(response: bytes) -> dict[bytes, bytes]:
    head = response.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    result = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        result[name.strip().lower()] = value.strip()
    return result


# -- handshake -------------------------------------------------------------------


@pytest.mark.parametrize("name", ENGINES)
def test_accept_response(name: str) -> None:
    engine, response = make(name)
    assert response.startswith(b"HTTP/1.1 101 ")
    headers = response_headers(response)
    assert headers[b"sec-websocket-accept"] == base64.b64encode(hashlib.sha1(KEY + GUID).digest())
    assert headers[b"upgrade"].lower() == b"websocket"
    assert headers[b"server"] == b"corral"
    assert b"sec-websocket-protocol" not in headers
    assert b"sec-websocket-extensions" not in headers
    assert engine.extensions is None
    assert response.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("name", ENGINES)
def test_accept_with_subprotocol(name: str) -> None:
    offer = (b"sec-websocket-protocol", b"chat, superchat")
    assert offered_subprotocols(request_head(offer)) == ["chat", "superchat"]
    _, response = make(name, offer, subprotocol="superchat")
    assert response_headers(response)[b"sec-websocket-protocol"] == b"superchat"


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("enabled", [True, False])
def test_deflate_negotiation(name: str, enabled: bool) -> None:
    offer = (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")
    engine, response = make(name, offer, deflate=enabled)
    negotiated = response_headers(response).get(b"sec-websocket-extensions")
    if enabled:
        assert negotiated is not None and negotiated.startswith(b"permessage-deflate")
        assert engine.extensions is not None and engine.extensions.startswith("permessage-deflate")
        # A compressed message from the client (RFC 7692 section 7.2.1: raw
        # deflate, the trailing 00 00 ff ff removed, RSV1 set).
        compressor = zlib.compressobj(wbits=-9)
        data = compressor.compress(b"hello " * 100) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        assert engine.receive_data(frame(TEXT, data[:-4], rsv1=True)) == [Text("hello " * 100)]
        # And our messages are compressed: RSV1 set, payload smaller.
        out = engine.send_text("x" * 1000)
        assert out[0] & 0x40 and len(out) < 200
    else:
        assert negotiated is None and engine.extensions is None
        # Not negotiated: RSV1 is a protocol error.
        events = engine.receive_data(frame(TEXT, b"abc", rsv1=True))
        assert [type(e) for e in events] == [ProtocolError] and events[0].code == 1002


def test_deflate_not_offered_not_negotiated() -> None:
    for name in ENGINES:
        engine, response = make(name, deflate=True)
        assert b"sec-websocket-extensions" not in response_headers(response)
        assert engine.extensions is None


@pytest.mark.parametrize("head, status", [
    (request_head(method="POST"), 400),
    (request_head(version="1.0"), 400),
    (request_head(key=b"not base64!"), 400),
    (request_head(key=base64.b64encode(b"short")), 400),
    (request_head(ws_version=b"8"), 400),
    # Malformed lists and a second Upgrade protocol: refused the same on both engines.
    (request_head((b"sec-websocket-extensions", b";;;,,")), 400),
    (request_head((b"sec-websocket-protocol", b"a b, ,c")), 400),
])
def test_invalid_handshake(head: RequestHead, status: int) -> None:
    with pytest.raises(HandshakeError) as info:
        check_request(head)
    assert info.value.status == status


def test_version_mismatch_names_supported_version() -> None:
    with pytest.raises(HandshakeError) as info:
        check_request(request_head(ws_version=b"8"))
    assert (b"sec-websocket-version", b"13") in info.value.headers


def test_missing_key_and_duplicate_host() -> None:
    head = request_head()
    head.headers = [(k, v) for k, v in head.headers if k != b"sec-websocket-key"]
    with pytest.raises(HandshakeError):
        check_request(head)
    head = request_head((b"host", b"other.example"))
    with pytest.raises(HandshakeError):
        check_request(head)
    check_request(request_head())  # the valid one passes
    head = request_head()
    head.headers = [(k, b"websocket, h2c" if k == b"upgrade" else v) for k, v in head.headers]
    with pytest.raises(HandshakeError):
        check_request(head)
    check_request(request_head((b"sec-websocket-protocol", b"chat, , superchat"),
                               (b"sec-websocket-extensions", b'permessage-deflate; client_max_window_bits, x; a="b"')))


# -- frames in, events out ------------------------------------------------------------


@pytest.mark.parametrize("name", ENGINES)
def test_text_and_binary(name: str) -> None:
    engine, _ = make(name)
    assert engine.receive_data(frame(TEXT, "héllo".encode())) == [Text("héllo")]
    assert engine.receive_data(frame(BINARY, b"\x00\x01\xff")) == [Bytes(b"\x00\x01\xff")]
    # Two frames in one read, and one frame split across reads.
    both = frame(TEXT, b"a") + frame(TEXT, b"b")
    assert engine.receive_data(both) == [Text("a"), Text("b")]
    data = frame(BINARY, b"x" * 300)
    assert engine.receive_data(data[:5]) == []
    assert engine.receive_data(data[5:]) == [Bytes(b"x" * 300)]


@pytest.mark.parametrize("name", ENGINES)
def test_fragmented_message_reassembled(name: str) -> None:
    engine, _ = make(name)
    text = "€ and more".encode()
    # The euro sign is split across two fragments: valid as a whole.
    data = frame(TEXT, text[:2], fin=False) + frame(CONT, text[2:6], fin=False) + frame(CONT, text[6:])
    assert engine.receive_data(data) == [Text("€ and more")]
    data = frame(BINARY, b"ab", fin=False) + frame(PING, b"mid") + frame(CONT, b"cd")
    events = engine.receive_data(data)
    assert events == [Bytes(b"abcd")]
    # The ping inside the fragmented message was answered.
    assert server_frames(engine.data_to_send()) == [(PONG, True, b"mid")]


@pytest.mark.parametrize("name", ENGINES)
def test_ping_answered_and_pong_reported(name: str) -> None:
    engine, _ = make(name)
    assert engine.receive_data(frame(PING, b"1234")) == []
    assert server_frames(engine.data_to_send()) == [(PONG, True, b"1234")]
    assert engine.receive_data(frame(PONG, b"abcd")) == [Pong(b"abcd")]
    assert server_frames(engine.send_ping(b"zz")) == [(PING, True, b"zz")]


@pytest.mark.parametrize("name", ENGINES)
def test_unmasked_frame_is_protocol_error(name: str) -> None:
    engine, _ = make(name)
    events = engine.receive_data(frame(TEXT, b"hi", mask=False))
    assert [type(e) for e in events] == [ProtocolError] and events[0].code == 1002
    assert server_frames(engine.data_to_send())[0][:2] == (CLOSE, True)


@pytest.mark.parametrize("name", ENGINES)
def test_invalid_utf8_is_1007(name: str) -> None:
    engine, _ = make(name)
    events = engine.receive_data(frame(TEXT, b"ok \xff\xfe"))
    assert [type(e) for e in events] == [ProtocolError] and events[0].code == 1007
    sent = server_frames(engine.data_to_send())
    assert sent[0][0] == CLOSE and struct.unpack("!H", sent[0][2][:2])[0] == 1007


@pytest.mark.parametrize("name", ENGINES)
def test_invalid_utf8_in_fragments_is_1007(name: str) -> None:
    engine, _ = make(name)
    events = engine.receive_data(frame(TEXT, b"abc", fin=False) + frame(CONT, b"\xc0\xaf", fin=False))
    assert [type(e) for e in events] == [ProtocolError] and events[0].code == 1007


@pytest.mark.parametrize("name", ENGINES)
def test_oversized_message_is_1009(name: str) -> None:
    engine, _ = make(name, max_size=1000)
    assert engine.receive_data(frame(BINARY, b"x" * 1000)) == [Bytes(b"x" * 1000)]
    events = engine.receive_data(frame(BINARY, b"x" * 1001))
    assert [type(e) for e in events] == [ProtocolError] and events[0].code == 1009
    sent = server_frames(engine.data_to_send())
    assert sent[0][0] == CLOSE and struct.unpack("!H", sent[0][2][:2])[0] == 1009


@pytest.mark.parametrize("name", ENGINES)
def test_oversized_fragmented_message_is_1009(name: str) -> None:
    engine, _ = make(name, max_size=1000)
    data = b"".join(frame(TEXT if i == 0 else CONT, b"y" * 300, fin=False) for i in range(4))
    events = engine.receive_data(data)
    assert [type(e) for e in events] == [ProtocolError] and events[0].code == 1009


@pytest.mark.parametrize("name", ENGINES)
def test_bad_opcode_is_1002(name: str) -> None:
    engine, _ = make(name)
    events = engine.receive_data(frame(0x3, b"??"))
    assert [type(e) for e in events] == [ProtocolError] and events[0].code == 1002


@pytest.mark.parametrize("name", ENGINES)
def test_control_frame_over_125_bytes_is_1002(name: str) -> None:
    engine, _ = make(name)
    events = engine.receive_data(frame(PING, b"p" * 126))
    assert [type(e) for e in events] == [ProtocolError] and events[0].code == 1002


@pytest.mark.parametrize("name", ENGINES)
def test_nothing_read_after_failure(name: str) -> None:
    engine, _ = make(name)
    engine.receive_data(frame(0x3, b"??"))
    engine.data_to_send()
    assert engine.receive_data(frame(TEXT, b"late")) == []
    assert engine.send_text("too late") == b""


# -- closing handshake ----------------------------------------------------------------


@pytest.mark.parametrize("name", ENGINES)
def test_close_started_by_client(name: str) -> None:
    engine, _ = make(name)
    events = engine.receive_data(frame(CLOSE, close_payload(4001, "bye")))
    assert events == [Close(4001, "bye")]
    # The echo goes out with the same code; nothing may be sent after it.
    sent = server_frames(engine.data_to_send())
    assert sent[0][0] == CLOSE and struct.unpack("!H", sent[0][2][:2])[0] == 4001
    assert engine.send_text("after close") == b""
    assert engine.send_close(1000, "") == b""


@pytest.mark.parametrize("name", ENGINES)
def test_empty_close_from_client_is_1005(name: str) -> None:
    engine, _ = make(name)
    assert engine.receive_data(frame(CLOSE)) == [Close(1005, "")]


@pytest.mark.parametrize("name", ENGINES)
def test_close_started_by_server(name: str) -> None:
    engine, _ = make(name)
    sent = server_frames(engine.send_close(1012, "service restart"))
    assert sent == [(CLOSE, True, close_payload(1012, "service restart"))]
    # A second close is not sent; data frames are dropped until the answer.
    assert engine.send_close(1000, "") == b""
    assert engine.send_text("x") == b""
    events = engine.receive_data(frame(CLOSE, close_payload(1012, "service restart")))
    assert events == [Close(1012, "service restart")]
    assert engine.data_to_send() == b""


@pytest.mark.parametrize("name", ENGINES)
def test_server_frames_unmasked(name: str) -> None:
    engine, _ = make(name)
    assert server_frames(engine.send_text("hé")) == [(TEXT, True, "hé".encode())]
    assert server_frames(engine.send_bytes(b"\x00" * 70000)) == [(BINARY, True, b"\x00" * 70000)]


def test_close_code_rules() -> None:
    assert all(sendable_close_code(c) for c in (1000, 1001, 1011, 1012, 3000, 4999))
    assert not any(sendable_close_code(c) for c in (999, 1004, 1005, 1006, 1015, 2000, 5000))
    assert truncate_reason("é" * 100).encode() == ("é" * 61).encode()


@pytest.mark.parametrize("name", ENGINES)
def test_compressed_message_over_max_size_is_1009(name: str) -> None:
    """A small compressed frame that inflates past max_size fails before it is inflated whole."""
    offer = (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")
    engine, _ = make(name, offer, max_size=10_000, deflate=True)
    compressor = zlib.compressobj(wbits=-12)
    bomb = compressor.compress(b"\x00" * 5_000_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 10_000  # 500 times the limit once inflated
    events = engine.receive_data(frame(BINARY, bomb[:-4], rsv1=True))
    assert [type(e) for e in events] == [ProtocolError] and events[0].code == 1009


def test_denial_response_framing() -> None:
    chunked = DenialResponse(403, [(b"Content-Type", b"text/plain")], [(b"server", b"corral")])
    assert chunked.head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"server: corral\r\n" in chunked.head and b"content-type: text/plain\r\n" in chunked.head
    assert b"transfer-encoding: chunked\r\n" in chunked.head and chunked.head.endswith(b"connection: close\r\n\r\n")
    assert chunked.body(b"denied", True) == b"6\r\ndenied\r\n"
    assert chunked.body(b"", False) == b"0\r\n\r\n"
    sized = DenialResponse(401, [(b"content-length", b"2")], [])
    assert b"transfer-encoding" not in sized.head
    assert sized.body(b"no", False) == b"no"
    with pytest.raises(RuntimeError):
        DenialResponse(400, [(b"x-evil", b"a\r\nset-cookie: b")], [])


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("deflate", [False, True])
def test_garbage_never_raises(name: str, deflate: bool) -> None:
    """Random bytes (and random valid-looking frames) only ever give neutral events."""
    import random

    rng = random.Random(6455)
    offer = (b"sec-websocket-extensions", b"permessage-deflate")
    for _ in range(300):
        engine, _ = make(name, offer, max_size=4096, deflate=deflate)
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.5:
                data = rng.randbytes(rng.randint(1, 300))
            else:
                data = frame(rng.randint(0, 15), rng.randbytes(rng.randint(0, 200)) if rng.random() < 0.5 else b"",
                             fin=rng.random() < 0.7, mask=rng.random() < 0.9, rsv1=rng.random() < 0.3)
            events = engine.receive_data(data)
            engine.data_to_send()
            assert all(isinstance(e, Text | Bytes | Pong | Close | ProtocolError) for e in events)
            if any(isinstance(e, Close | ProtocolError) for e in events):
                break
