"""Sans-I/O request parsing: the hardening corpus and the good cases, on both parsers.

Bytes in, events out: no sockets, no loop. Every case runs on httptools and
on h11 and must give the same answer.
"""

from __future__ import annotations

import pytest

from server_core.http.events import Body, EndOfMessage, ParseError
from server_core.http.head import KNOWN_METHODS, HeadLimits
from server_core.http.parse_h11 import H11Parser
from server_core.http.parse_httptools import HttptoolsParser
from server_core.http.parse_zttp import ZttpParser
from server_core.http.reader import MessageReader
from server_core.state import RequestHead

PARSERS = {"httptools": HttptoolsParser, "h11": H11Parser, "zttp": ZttpParser}


def expand(events: list) -> list:
    """The events with a complete head's body spelled out as Body and EndOfMessage events.

    A parser may hand a request that is already complete as one head carrying
    its body (``RequestHead.body``); the protocol treats both forms alike, so
    most tests here check the expanded stream, which is the same on both
    parsers however the bytes were split.
    """
    out: list = []
    for event in events:
        out.append(event)
        if isinstance(event, RequestHead) and event.body is not None:
            if event.body:
                out.append(Body(event.body))
            out.append(EndOfMessage())
    return out


class _Expanding:
    def feed(self, data: bytes) -> list:
        return expand(super().feed(data))  # type: ignore[misc]


EXPANDING = {name: type(f"Expanding{cls.__name__}", (_Expanding, cls), {}) for name, cls in PARSERS.items()}


@pytest.fixture(params=sorted(PARSERS))
def make(request: pytest.FixtureRequest):
    """A parser factory whose feed() returns the expanded event stream (see :func:`expand`)."""
    cls = EXPANDING[request.param]

    def build(limits: HeadLimits | None = None, **kw) -> MessageReader:
        return cls(limits, **kw)

    return build


def feed_all(parser: MessageReader, data: bytes, *, eof: bool = False) -> list:
    events = parser.feed(data)
    if eof:
        events += parser.eof()
    return events


H = b"Host: example.com\r\n"
POST = b"POST /p HTTP/1.1\r\n" + H


def req(*lines: bytes, body: bytes = b"", start: bytes = b"POST /p HTTP/1.1") -> bytes:
    return start + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked"

# (id, request bytes, expected status, feed EOF after the bytes)
MALFORMED: list[tuple[str, bytes, int, bool]] = [
    ("cl-and-te", req(H[:-2], b"Content-Length: 3", CHUNKED, body=b"3\r\nabc\r\n0\r\n\r\n"), 400, False),
    ("te-and-cl", req(H[:-2], CHUNKED, b"Content-Length: 3", body=b"abc"), 400, False),
    ("cl-and-te-identity", req(H[:-2], b"Content-Length: 3", b"Transfer-Encoding: identity"), 400, False),
    ("duplicate-cl-same", req(H[:-2], b"Content-Length: 3", b"Content-Length: 3", body=b"abc"), 400, False),
    ("duplicate-cl-different", req(H[:-2], b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"), 400, False),
    ("cl-list", req(H[:-2], b"Content-Length: 3, 3", body=b"abc"), 400, False),
    ("cl-plus", req(H[:-2], b"Content-Length: +5", body=b"abcde"), 400, False),
    ("cl-minus", req(H[:-2], b"Content-Length: -1"), 400, False),
    ("cl-hex", req(H[:-2], b"Content-Length: 0x10"), 400, False),
    ("cl-inner-space", req(H[:-2], b"Content-Length: 1 0"), 400, False),
    ("cl-empty", req(H[:-2], b"Content-Length:"), 400, False),
    ("cl-overflow", req(H[:-2], b"Content-Length: 99999999999999999999999"), 400, False),
    ("te-chunked-identity", req(H[:-2], b"Transfer-Encoding: chunked, identity"), 400, False),
    ("te-identity", req(H[:-2], b"Transfer-Encoding: identity", body=b"abc"), 400, False),
    ("te-gzip-only", req(H[:-2], b"Transfer-Encoding: gzip"), 400, False),
    ("te-xchunked", req(H[:-2], b"Transfer-Encoding: xchunked"), 400, False),
    ("te-chunked-twice", req(H[:-2], b"Transfer-Encoding: chunked, chunked"), 400, False),
    ("te-two-headers-last-gzip", req(H[:-2], CHUNKED, b"Transfer-Encoding: gzip"), 400, False),
    ("te-empty", req(H[:-2], b"Transfer-Encoding: "), 400, False),
    ("te-gzip-chunked", req(H[:-2], b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501, False),
    ("te-in-http10", req(CHUNKED, start=b"POST /p HTTP/1.0", body=b"0\r\n\r\n"), 400, False),
    ("obs-fold", req(H[:-2], b"X-Long: a", b" continued"), 400, False),
    ("obs-fold-tab", req(H[:-2], b"X-Long: a", b"\tcontinued"), 400, False),
    ("obs-fold-first-line", req(b" X-Long: a", H[:-2]), 400, False),
    ("space-before-colon", req(b"Host : example.com"), 400, False),
    ("tab-before-colon", req(H[:-2], b"Content-Length\t: 3", body=b"abc"), 400, False),
    ("nul-in-value", req(H[:-2], b"X-A: a\x00b"), 400, False),
    ("cr-in-value", req(H[:-2], b"X-A: a\rb"), 400, False),
    ("lf-in-value", req(H[:-2], b"X-A: a\nb"), 400, False),
    ("ctl-in-value", req(H[:-2], b"X-A: a\x01b"), 400, False),
    ("del-in-value", req(H[:-2], b"X-A: a\x7fb"), 400, False),
    ("bad-name-char", req(H[:-2], b"X(A): 1"), 400, False),
    ("empty-name", req(H[:-2], b": value"), 400, False),
    ("no-colon", req(H[:-2], b"JustAName"), 400, False),
    ("chunk-size-zz", req(H[:-2], CHUNKED, body=b"zz\r\nabc\r\n0\r\n\r\n"), 400, False),
    ("chunk-size-negative", req(H[:-2], CHUNKED, body=b"-1\r\nabc\r\n0\r\n\r\n"), 400, False),
    ("chunk-size-overflow", req(H[:-2], CHUNKED, body=b"fffffffffffffffff\r\nabc\r\n"), 400, False),
    ("chunk-size-0x", req(H[:-2], CHUNKED, body=b"0x3\r\nabc\r\n0\r\n\r\n"), 400, False),
    ("chunk-size-empty", req(H[:-2], CHUNKED, body=b"\r\nabc\r\n0\r\n\r\n"), 400, False),
    ("chunk-size-trailing-space", req(H[:-2], CHUNKED, body=b"3 \r\nabc\r\n0\r\n\r\n"), 400, False),
    ("chunk-ext-garbage", req(H[:-2], CHUNKED, body=b"3;\x01\r\nabc\r\n0\r\n\r\n"), 400, False),
    ("chunk-ext-no-name", req(H[:-2], CHUNKED, body=b"3;=x\r\nabc\r\n0\r\n\r\n"), 400, False),
    ("chunk-ext-bad-quote", req(H[:-2], CHUNKED, body=b'3;a="x\r\nabc\r\n0\r\n\r\n'), 400, False),
    ("chunk-data-too-long", req(H[:-2], CHUNKED, body=b"3\r\nabcd\r\n0\r\n\r\n"), 400, False),
    ("chunk-bare-lf", req(H[:-2], CHUNKED, body=b"3\nabc\r\n0\r\n\r\n"), 400, False),
    ("chunk-data-bare-lf", req(H[:-2], CHUNKED, body=b"3\r\nabc\n0\r\n\r\n"), 400, False),
    ("chunk-bad-trailer", req(H[:-2], CHUNKED, body=b"3\r\nabc\r\n0\r\nBad Trailer: x\r\n\r\n"), 400, False),
    ("chunked-truncated", req(H[:-2], CHUNKED, body=b"5\r\nab"), 400, True),
    ("chunked-no-last-chunk", req(H[:-2], CHUNKED, body=b"3\r\nabc\r\n"), 400, True),
    ("length-truncated", req(H[:-2], b"Content-Length: 10", body=b"abc"), 400, True),
    ("head-truncated", b"GET / HTTP/1.1\r\nHost: a\r\n", 400, True),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", 400, False),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, False),
    ("bare-lf-end-of-head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400, False),
    ("bare-cr", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, False),
    ("http09", b"GET /\r\n\r\n", 400, False),
    ("http2-version", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, False),
    ("http99-version", b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", 505, False),
    ("http1-12-version", b"GET / HTTP/1.12\r\nHost: a\r\n\r\n", 400, False),
    ("http1-version", b"GET / HTTP/1\r\nHost: a\r\n\r\n", 400, False),
    ("lowercase-version", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("no-version-name", b"GET / 1.1\r\nHost: a\r\n\r\n", 400, False),
    ("method-bad-char", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("method-nul", b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("method-unknown", b"FROB / HTTP/1.1\r\nHost: a\r\n\r\n", 501, False),
    ("method-lowercase", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 501, False),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501, False),
    ("double-space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("trailing-space-request-line", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, False),
    ("tab-separator", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("non-ascii-target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("fragment-in-target", b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("relative-target", b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("absolute-ftp", b"GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("absolute-userinfo", b"GET http://user@a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("absolute-no-host", b"GET http:///b HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("asterisk-get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, False),
    ("missing-host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, False),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, False),
    ("two-hosts-http10", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, False),
    ("request-line-too-long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, False),
    ("too-many-headers", req(H[:-2], *[b"X-%d: v" % i for i in range(101)], start=b"GET / HTTP/1.1"), 431, False),
    ("field-too-large", req(H[:-2], b"X-Big: " + b"v" * 9000, start=b"GET / HTTP/1.1"), 431, False),
    ("name-too-large", req(H[:-2], b"X" * 9000 + b": v", start=b"GET / HTTP/1.1"), 431, False),
]


@pytest.mark.parametrize(("raw", "status", "eof"), [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_malformed_request_is_refused(make, raw: bytes, status: int, eof: bool) -> None:
    events = feed_all(make(), raw, eof=eof)
    errors = [event for event in events if isinstance(event, ParseError)]
    assert errors, f"accepted: {events}"
    assert errors[0].status == status, errors[0]
    assert events[-1] is errors[0], "events after an error"
    # Nothing is parsed after an error, whatever comes next.
    parser = make()
    feed_all(parser, raw, eof=eof)
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") == []


@pytest.mark.parametrize(("raw", "status", "eof"), [case[1:] for case in MALFORMED if not case[2] == 431],
                         ids=[case[0] for case in MALFORMED if not case[2] == 431])
def test_malformed_request_refused_byte_by_byte(make, raw: bytes, status: int, eof: bool) -> None:
    """The same verdict when the bytes trickle in one at a time."""
    parser = make()
    events: list = []
    for byte in raw:
        events += parser.feed(bytes([byte]))
    if eof:
        events += parser.eof()
    errors = [event for event in events if isinstance(event, ParseError)]
    assert errors and errors[0].status == status, events


def test_corpus_is_large_enough() -> None:
    assert len(MALFORMED) >= 45


def test_pipelined_requests_in_one_feed(make) -> None:
    data = (b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /two?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
            b"PUT /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nab\r\n1;ext=\"q\"\r\nc\r\n0\r\n\r\n"
            b"GET /four HTTP/1.1\r\nHost: a\r\n\r\n")
    events = make().feed(data)
    heads = [event for event in events if isinstance(event, RequestHead)]
    assert [head.path for head in heads] == ["/one", "/two", "/three", "/four"]
    assert heads[1].query_string == b"x=1"
    kinds = [type(event).__name__ for event in events]
    assert kinds == ["RequestHead", "EndOfMessage", "RequestHead", "Body", "EndOfMessage",
                     "RequestHead", "Body", "EndOfMessage", "RequestHead", "EndOfMessage"]
    assert events[3].data == b"hello"
    assert events[6].data == b"abc"


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_a_request_complete_in_one_read_is_one_event(name: str) -> None:
    """No body, or (httptools, zttp) a Content-Length body in the same read: the head carries it."""
    parser = PARSERS[name]()
    [head] = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.body == b""
    events = parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                         b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\no")
    if name in ("httptools", "zttp"):  # length_body_direct
        assert [type(event).__name__ for event in events] == ["RequestHead", "RequestHead", "Body"]
        assert events[0].body == b"hello" and events[1].body is None and events[2].data == b"o"
    else:  # h11 parses every body itself: events as usual
        assert [type(event).__name__ for event in events] == [
            "RequestHead", "Body", "EndOfMessage", "RequestHead", "Body"]
        assert events[0].body is None
    assert [type(event).__name__ for event in parser.feed(b"k")] == ["Body", "EndOfMessage"]


def test_pipelined_byte_by_byte_gives_same_requests(make) -> None:
    data = (b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz"
            b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nuvw\r\n0\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
    parser = make()
    events: list = []
    for byte in data:
        events += parser.feed(bytes([byte]))
    heads = [event.path for event in events if isinstance(event, RequestHead)]
    assert heads == ["/a", "/b", "/c"]
    body = b"".join(event.data for event in events if isinstance(event, Body))
    assert body == b"xyzuvw"
    assert sum(isinstance(event, EndOfMessage) for event in events) == 3


def test_chunked_body_with_trailers(make) -> None:
    events = make().feed(req(H[:-2], CHUNKED, body=b"4;a=b\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Check: 1\r\n\r\n"))
    assert b"".join(event.data for event in events if isinstance(event, Body)) == b"Wikipedia"
    assert isinstance(events[-1], EndOfMessage)
    head = events[0]
    assert (b"x-check", b"1") not in head.headers


# Trailer fields the libraries would read differently (llhttp acts on framing
# fields in a trailer section, h11 does not): dropped on both, never acted on.
FRAMING_TRAILERS = [
    ("connection-close", b"Connection: close"),
    ("content-length", b"Content-Length: 50"),
    ("transfer-encoding", b"Transfer-Encoding: chunked"),
    ("upgrade", b"Connection: upgrade\r\nUpgrade: websocket"),
    ("several", b"X-A: 1\r\nContent-Length: 0\r\nConnection: close\r\nX-B: 2"),
]


@pytest.mark.parametrize("trailer", [case[1] for case in FRAMING_TRAILERS], ids=[case[0] for case in FRAMING_TRAILERS])
@pytest.mark.parametrize("split", ["whole", "byte-by-byte"])
def test_framing_fields_in_trailers_are_dropped_on_both_parsers(make, trailer: bytes, split: str) -> None:
    raw = (req(H[:-2], CHUNKED, body=b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n\r\n")
           + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    parser = make(upgrade_tokens=frozenset({b"websocket"}))
    events: list = []
    for piece in [raw] if split == "whole" else [bytes([byte]) for byte in raw]:
        events += parser.feed(piece)
    assert not [event for event in events if isinstance(event, ParseError)], events
    heads = [event for event in events if isinstance(event, RequestHead)]
    assert [head.path for head in heads] == ["/p", "/next"]
    assert heads[0].keep_alive and heads[0].upgrade is None
    assert b"".join(event.data for event in events if isinstance(event, Body)) == b"abc"
    assert sum(isinstance(event, EndOfMessage) for event in events) == 2
    assert not parser.closed


def test_parsers_agree_on_framing_trailers() -> None:
    for name, trailer in FRAMING_TRAILERS:
        raw = (req(H[:-2], CHUNKED, body=b"3\r\nabc\r\n0\r\n" + trailer + b"\r\n\r\n")
               + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        results = [[(type(e).__name__, getattr(e, "status", None)) for e in cls().feed(raw)] for cls in PARSERS.values()]
        assert results[0] == results[1], name


def test_header_values_trimmed_and_names_lowercased(make) -> None:
    [head, _] = make().feed(b"GET /a%20b?q=%20 HTTP/1.1\r\nHOST:   example.com  \r\nX-Empty:\r\n\r\n")
    assert head.headers == [(b"host", b"example.com"), (b"x-empty", b"")]
    assert head.path == "/a b" and head.raw_path == b"/a%20b" and head.query_string == b"q=%20"


@pytest.mark.parametrize("split", ["whole", "byte-by-byte"])
def test_every_field_kept_in_order_names_sent_twice_included(make, split: str) -> None:
    """A name sent twice (same case or not) keeps both lines, in order, on every parser; so
    does a browser-sized head, and the next keep-alive request starts afresh."""
    fields = [b"Host: a", b"Cookie: a=1", b"Accept: */*", b"cookie: b=2", b"X-Trail: v \t", b"Cookie: c=3"]
    big = [b"Host: b"] + [b"X-F%d: %d" % (i, i) for i in range(40)]
    data = req(*fields) + req(*big) + req(b"Host: c", b"A: 1", b"a: 2")
    chunks = [data] if split == "whole" else [data[i:i + 1] for i in range(len(data))]
    parser = make()
    heads = [event for chunk in chunks for event in parser.feed(chunk) if isinstance(event, RequestHead)]
    assert [head.headers for head in heads] == [
        [(b"host", b"a"), (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2"), (b"x-trail", b"v"),
         (b"cookie", b"c=3")],
        [(b"host", b"b")] + [(b"x-f%d" % i, b"%d" % i) for i in range(40)],
        [(b"host", b"c"), (b"a", b"1"), (b"a", b"2")],
    ]


@pytest.mark.parametrize("split", ["whole", "byte-by-byte"])
def test_forwarded_fields_collected_in_order(make, split: str) -> None:
    """Every X-Forwarded-* line, any case, in order; X-Forwarded-For values keep their case."""
    raw = (b"GET / HTTP/1.1\r\nX-Forwarded-Proto: HTTPS\r\nHost: a\r\nX-FORWARDED-FOR: 2001:DB8::1 \r\n"
           b"Accept: */*\r\nx-forwarded-for:\t10.0.0.1\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Host: b\r\n\r\n")
    parser = make()
    events: list = []
    for piece in [raw] if split == "whole" else [bytes([byte]) for byte in raw]:
        events += parser.feed(piece)
    head = events[0]
    assert head.forwarded == ((b"x-forwarded-proto", b"https"), (b"x-forwarded-for", b"2001:DB8::1"),
                              (b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-port", b"443"))
    assert (b"x-forwarded-for", b"2001:DB8::1") in head.headers  # still headers for the application
    assert make().feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")[0].forwarded == ()


def test_expect_continue(make) -> None:
    [head] = make().feed(req(H[:-2], b"Content-Length: 3", b"Expect: 100-continue"))
    assert head.expect_continue
    [head, _] = make().feed(b"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n")
    assert not head.expect_continue


@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    (b"1.1", b"", True), (b"1.1", b"Connection: close\r\n", False),
    (b"1.1", b"Connection: keep-alive, Close\r\n", False),
    (b"1.0", b"", False), (b"1.0", b"Connection: keep-alive\r\n", True),
])
def test_keep_alive_semantics(make, version: bytes, connection: bytes, keep_alive: bool) -> None:
    parser = make()
    events = parser.feed(b"GET / HTTP/" + version + b"\r\nHost: a\r\n" + connection + b"\r\n")
    assert events[0].keep_alive is keep_alive
    # After a request that ends the connection nothing more is parsed.
    more = parser.feed(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert bool(more) is keep_alive


def test_websocket_upgrade_pauses_parsing(make) -> None:
    parser = make(upgrade_tokens=frozenset({b"websocket"}))
    raw = (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x05hello")
    events = parser.feed(raw)
    assert len(events) == 1 and events[0].upgrade == b"websocket"
    assert parser.feed(b"more") == []
    assert parser.trailing_data == b"\x81\x05hellomore"


@pytest.mark.parametrize("framing", [b"Content-Length: 7", b"Transfer-Encoding: chunked"])
def test_websocket_upgrade_with_a_body_is_refused(make, framing: bytes) -> None:
    """Its body would be read as WebSocket frames: 400 instead of a hand-off."""
    parser = make(upgrade_tokens=frozenset({b"websocket"}))
    events = parser.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         + framing + b"\r\n\r\n\x81\x05hello")
    assert [(type(event), getattr(event, "status", None)) for event in events] == [(ParseError, 400)]
    # Content-Length: 0 is no body: the hand-off goes ahead.
    parser = make(upgrade_tokens=frozenset({b"websocket"}))
    events = parser.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         b"Content-Length: 0\r\n\r\n")
    assert len(events) == 1 and events[0].upgrade == b"websocket"


def test_upgrade_not_taken_is_plain_http(make) -> None:
    """Upgrade: h2c (or websocket with --ws none) is served as HTTP, body included."""
    parser = make(upgrade_tokens=frozenset({b"websocket"}))
    events = parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 4\r\n\r\nbody"
                         b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert events[0].upgrade == b"h2c"
    assert [type(event).__name__ for event in events] == [
        "RequestHead", "Body", "EndOfMessage", "RequestHead", "EndOfMessage"]
    assert events[1].data == b"body"


def test_upgrade_not_taken_with_chunked_body(make) -> None:
    """The chunked body of an upgrade we do not perform is decoded, and the next request follows."""
    parser = make(upgrade_tokens=frozenset({b"websocket"}))
    events = parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
                         b"POST /next HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
    assert [type(event).__name__ for event in events] == [
        "RequestHead", "Body", "EndOfMessage", "RequestHead", "Body", "EndOfMessage"]
    assert (events[1].data, events[3].path, events[4].data) == (b"body", "/next", b"ok")


def test_upgrade_needs_connection_upgrade(make) -> None:
    [head, _] = make().feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    assert head.upgrade is None


def test_absolute_form_and_asterisk(make) -> None:
    [head, _] = make().feed(b"GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert head.raw_path == b"/a/b" and head.query_string == b"c=d"
    [head, _] = make().feed(b"GET HTTP://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert head.raw_path == b"/"
    [head, _] = make().feed(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.raw_path == b"*"


def test_absolute_form_authority_replaces_host(make) -> None:
    """RFC 9112 §3.2.2: the target's authority, not the Host field, is the host the app sees."""
    [head, _] = make().feed(b"GET http://other.example:8080/p?q=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    assert head.headers == [(b"host", b"other.example:8080"), (b"accept", b"*/*")]
    assert (head.raw_path, head.query_string) == (b"/p", b"q=1")
    # HTTP/1.0 needs no Host: the authority is added.
    [head, _] = make().feed(b"GET https://other.example HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert head.headers == [(b"accept", b"*/*"), (b"host", b"other.example")]
    # Origin-form keeps its Host.
    [head, _] = make().feed(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.headers == [(b"host", b"x")]


def test_leading_empty_lines_are_ignored(make) -> None:
    events = make().feed(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(events[0], RequestHead)


def test_content_length_zero_and_http10_without_host(make) -> None:
    events = make().feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
                         b"GET /old HTTP/1.0\r\n\r\n")
    assert [type(event).__name__ for event in events] == [
        "RequestHead", "EndOfMessage", "RequestHead", "EndOfMessage"]


def test_limits_are_configurable(make) -> None:
    limits = HeadLimits(request_line=30, fields=2, field_size=20)
    assert make(limits).feed(b"GET /" + b"a" * 30 + b" HTTP/1.1\r\n")[0].status == 414
    assert make(limits).feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n")[0].status == 431
    assert make(limits).feed(b"GET / HTTP/1.1\r\nHost: " + b"x" * 20 + b"\r\n\r\n")[0].status == 431
    [head, _] = make(limits).feed(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n")
    assert head.headers[1] == (b"a", b"1")


@pytest.mark.parametrize("where", ["request-line", "field"])
def test_huge_head_is_refused_early(make, where: str) -> None:
    """Limits count bytes as they arrive: a megabyte head is refused after ~8 KiB."""
    parser = make()
    start = b"GET /" if where == "request-line" else b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: "
    events = parser.feed(start)
    sent = len(start)
    while not events and sent < 1024 * 1024:
        events = parser.feed(b"a" * 1024)
        sent += 1024
    assert events and events[0].status == (414 if where == "request-line" else 431)
    assert sent <= 8190 + 2048


def test_many_small_fields_refused_as_they_arrive(make) -> None:
    parser = make()
    events = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    count = 0
    while not events and count < 10_000:
        events = parser.feed(b"X: 1\r\n")
        count += 1
    assert events[0].status == 431 and count <= 102


# 90 fields of 8 KB: every line under --limit-request-field-size, 720 KB in all.
BIG_HEAD = (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(90))
            + b"\r\n")


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "trickled"])
def test_head_size_limit_is_the_same_on_every_parser(make, whole: bool) -> None:
    """--limit-request-head-size (default 65536) counts every byte of a head, complete or not: 431."""
    parser = make()
    if whole:
        events = parser.feed(BIG_HEAD)
    else:
        events, sent = [], 0
        while not events and sent < len(BIG_HEAD):
            events = parser.feed(BIG_HEAD[sent:sent + 4096])
            sent += 4096
        assert sent <= 65536 + 4096
    assert [type(event) for event in events] == [ParseError] and events[0].status == 431


def test_head_size_limit_comes_from_the_settings() -> None:
    from server_core.http import make_parser
    from server_core.settings import ServerSettings

    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: %s\r\n\r\n" % (b"v" * 3000)
    for http in PARSERS:
        small = make_parser(ServerSettings(http=http, limit_request_head_size=2048))
        assert small.feed(head)[0].status == 431, http
        assert small.limits.head == 2048
        large = make_parser(ServerSettings(http=http, limit_request_head_size=4096))
        assert isinstance(large.feed(head)[0], RequestHead), http
    # h11: the smaller of the head limit and its --h11-max-incomplete-event-size.
    assert make_parser(ServerSettings(http="h11")).limits.head == 16 * 1024
    h11 = make_parser(ServerSettings(http="h11", h11_max_incomplete_event_size=1 << 20))
    assert h11.limits.head == 65536
    assert h11.feed(BIG_HEAD)[0].status == 431


def test_pipelined_requests_are_parsed_a_batch_at_a_time(make) -> None:
    """One read of many tiny pipelined requests gives at most reader.BATCH events, then HELD.

    The rest waits in the parser as bytes (a fraction of the memory of parsed
    requests) until the connection feeds b"" again; at EOF it is all parsed.
    """
    from server_core.http.events import HELD

    raw = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(100))
    parser = make()
    first = parser.feed(raw)
    assert len(first) == 2 * 32 + 1 and first[-1] is HELD  # each head expands to head + EndOfMessage here
    assert parser.held and not parser.head_started
    second = parser.feed(b"")
    assert second[-1] is HELD
    rest = parser.feed(b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n")
    rest += parser.feed(b"") if rest[-1:] == [HELD] else []
    heads = [e.path for e in first + second + rest if isinstance(e, RequestHead)]
    assert heads == [f"/{i}" for i in range(100)] + ["/last"]
    assert not parser.held
    # At EOF, held requests are all parsed.
    parser = make()
    assert parser.feed(raw)[-1] is HELD
    tail = parser.eof()
    assert len([e for e in tail if isinstance(e, RequestHead)]) == 100 - 32
    assert not [e for e in tail if e is HELD or isinstance(e, ParseError)]


def test_h11_max_incomplete_event_size() -> None:
    parser = H11Parser(max_incomplete_event_size=1000)
    events = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: 12345678\r\n" * 100)
    assert events[0].status == 431


def test_known_methods_match_llhttp() -> None:
    """Every method we accept parses on httptools (so h11 and httptools agree)."""
    for method in KNOWN_METHODS:
        events = HttptoolsParser().feed(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert isinstance(events[0], RequestHead), (method, events)


def test_parsers_agree_on_corpus() -> None:
    """The whole corpus gives exactly the same statuses on both parsers."""
    for name, raw, _, eof in MALFORMED:
        results = []
        for cls in PARSERS.values():
            events = feed_all(cls(), raw, eof=eof)
            results.append([(type(e).__name__, getattr(e, "status", None)) for e in events])
        assert results[0] == results[1], name


def test_sans_io_modules_import_no_io() -> None:
    """The parsing and encoding modules stay free of asyncio and sockets."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "server_core"
    for rel in ("http/head.py", "http/chunked.py", "http/reader.py", "http/events.py",
                "http/response.py", "http/parse_httptools.py", "http/parse_h11.py", "proxy.py"):
        tree = ast.parse((root / rel).read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {name for name in names if name.split(".")[0] in ("asyncio", "socket", "selectors")}, rel


FUZZ_SEEDS = [
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: y\r\n\r\n",
    b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
]


def _verdict(cls: type[MessageReader], data: bytes, eof: bool) -> list:
    parser = cls()
    return _summarise(parser.feed(data) + (parser.eof() if eof else []))


def _summarise(events: list) -> list:
    out: list = []
    for event in expand(events):
        if isinstance(event, Body):
            out.append(("body", event.data))
        elif isinstance(event, ParseError):
            # Body bytes delivered just before an error may differ (one library
            # refuses a byte the other buffers); the verdict may not.
            while out and out[-1][0] == "body":
                out.pop()
            out.append(("error", event.status))
        elif isinstance(event, RequestHead):
            out.append(("head", event.method, event.raw_path, event.query_string, event.http_version,
                        tuple(event.headers), event.keep_alive, event.upgrade, event.expect_continue))
        else:
            out.append(("end",))
    merged: list = []
    for item in out:
        if item[0] == "body" and merged and merged[-1][0] == "body":
            merged[-1] = ("body", merged[-1][1] + item[1])
        else:
            merged.append(item)
    return merged


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parsers_agree_on_mutated_requests(seed: int) -> None:
    """Differential fuzzing: random byte mutations of valid requests get the same answer on all three."""
    import random

    rng = random.Random(seed)
    alphabet = b" \t\r\n:;,=\"\x00\x7f\x80\xffaZ09-/?#%"
    for _ in range(3000):
        data = bytearray(rng.choice(FUZZ_SEEDS))
        for _ in range(rng.randint(1, 3)):
            op, pos = rng.random(), rng.randrange(len(data) + 1)
            if op < 0.4:
                data[pos:pos] = bytes([rng.choice(alphabet)])
            elif pos < len(data):
                if op < 0.7:
                    del data[pos]
                else:
                    data[pos] = rng.choice(alphabet)
        eof = rng.random() < 0.3
        raw = bytes(data)
        expected = _verdict(HttptoolsParser, raw, eof)
        assert expected == _verdict(H11Parser, raw, eof), raw
        assert expected == _verdict(ZttpParser, raw, eof), raw


def _verdict_byte_by_byte(cls: type[MessageReader], data: bytes, eof: bool) -> list:
    parser = cls()
    events: list = []
    for byte in data:
        events += parser.feed(bytes([byte]))
    if eof:
        events += parser.eof()
    return _summarise(events)


@pytest.mark.parametrize("seed", [4, 5])
def test_fast_path_agrees_with_slow_path(seed: int) -> None:
    """A head read whole takes the one-regex fast path (match_head); read byte by byte it
    takes HeadScanner and check_head. Both must give the same verdict on anything."""
    import random

    rng = random.Random(seed)
    alphabet = b" \t\r\n:;,=\"\x00\x7f\x80\xffaZ09-/?#%"
    for _ in range(600):
        data = bytearray(rng.choice(FUZZ_SEEDS))
        for _ in range(rng.randint(0, 3)):
            op, pos = rng.random(), rng.randrange(len(data) + 1)
            if op < 0.4:
                data[pos:pos] = bytes([rng.choice(alphabet)])
            elif pos < len(data):
                if op < 0.7:
                    del data[pos]
                else:
                    data[pos] = rng.choice(alphabet)
        raw = bytes(data)
        for cls in PARSERS.values():
            assert _verdict(cls, raw, True) == _verdict_byte_by_byte(cls, raw, True), (cls.__name__, raw)


def test_fast_path_accepts_only_what_check_head_accepts() -> None:
    """match_head() is a narrowing of check_head(): never a head check_head() refuses."""
    from server_core.http.head import Reject, check_head, match_head

    heads = [raw for _, raw, _, _ in MALFORMED] + FUZZ_SEEDS + [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n",
        b"M-SEARCH * HTTP/1.1\r\nHost: a\r\nX: \t v \t\r\n\r\n",
    ]
    taken = 0
    for raw in heads:
        found = match_head(raw, 8190, 100)
        if found is None:
            continue
        taken += 1
        end, split = found
        try:
            assert check_head(raw[:end]) == split, raw
        except Reject as exc:
            raise AssertionError(f"fast path took a head check_head refuses ({exc.reason}): {raw!r}") from None
    assert taken >= 10  # the ordinary heads do take the fast path
    # Limits: a head longer than the size given, or with more fields, is left to the slow path.
    assert match_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 20, 100) is None
    assert match_head(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n", 8190, 1) is None
    assert match_head(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n", 8190, 2) is not None


def test_bytes_held_from_an_earlier_read_keep_the_slow_path(make) -> None:
    """A lone CR held from the previous read belongs to the next head: no fast path past it."""
    parser = make()
    assert parser.feed(b"\r") == []
    [error] = parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(error, ParseError) and error.status == 400
    parser = make()
    assert parser.feed(b"\r") == []
    [head, _] = parser.feed(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(head, RequestHead)
