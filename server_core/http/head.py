"""Finding, bounding and checking a request head, the same for both parsers.

Sans-I/O. The usual case, a whole head in one read, is checked by
:func:`match_head` with one regular expression. Anything else goes the slow
way: :class:`HeadScanner` collects the bytes of one request head as they
arrive, enforces the size limits while the head is still incomplete (so a
client cannot make us buffer megabytes of a head before we look at it), and
:func:`check_head` validates the complete head against the RFC 9112 grammar,
naming what is wrong. Both run before either library sees the head.
:func:`semantics` then applies the message-framing rules of RFC 9112 §6 to the
raw fields, and :func:`interpret` builds the neutral
:class:`~server_core.state.RequestHead`.

Every rejection raises :class:`Reject`, which carries its status.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from urllib.parse import unquote

from server_core.state import RequestHead


class Reject(Exception):
    """A request we refuse, with the status that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Size limits on a request head (the --limit-request-* options)."""

    request_line: int = 8190
    fields: int = 100
    field_size: int = 8190
    # Total head size (--limit-request-head-size; on h11 at most its
    # --h11-max-incomplete-event-size); None means only the limits above.
    head: int | None = 65536


# Methods llhttp (httptools) can parse. h11 accepts any token, but both
# parsers must behave the same, so a valid token outside this set is answered
# 501 on both (RFC 9110 §9.1: an unrecognised method SHOULD get 501).
KNOWN_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE OPTIONS TRACE PATCH COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)

# RFC 9110 §5.6.2:  token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#           "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
TOKEN_RE = re.compile(TOKEN)

# RFC 9112 §3:  request-line = method SP request-target SP HTTP-version
#   HTTP-version = HTTP-name "/" DIGIT "." DIGIT
# The target is restricted to visible ASCII (RFC 3986 characters are a subset);
# non-ASCII or control bytes in a target are a 400.
TARGET_RE = re.compile(rb"[\x21-\x7e]+")
VERSION_RE = re.compile(rb"HTTP/[0-9]\.[0-9]")

# RFC 9112 §5:  field-line = field-name ":" OWS field-value OWS
#   field-value = *field-content
#   field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
#   field-vchar = VCHAR / obs-text
# A name followed by whitespace before the colon (§5.1 "No whitespace is
# allowed between the field name and colon"), a line starting with whitespace
# (obs-fold, §5.2), and NUL/CR/LF/other controls in a value all fail this.
FIELD_LINE = (
    TOKEN + rb":[ \t]*(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?[ \t]*"
)
FIELD_LINE_RE = re.compile(FIELD_LINE)
FIELD_BLOCK_RE = re.compile(rb"(?:" + FIELD_LINE + rb"\r\n)*")

# RFC 9112 §6.1:  Transfer-Encoding = #transfer-coding (parameters refused:
# no coding with parameters is one we implement).
CODINGS_RE = re.compile(TOKEN + rb"(?: *, *" + TOKEN + rb")*")

# RFC 9110 §8.6:  Content-Length = 1*DIGIT  (no sign, no hex, no list)
DIGITS_RE = re.compile(rb"[0-9]{1,18}")

CRLF = b"\r\n"


class HeadScanner:
    """Accumulates one request head and checks it as the bytes arrive."""

    __slots__ = ("limits", "_buf", "_line_start", "_lines", "_scanned", "started")

    def __init__(self, limits: HeadLimits) -> None:
        self.limits = limits
        self.started = False
        # Bytes of an incomplete head. A bytearray, so a head trickling in a
        # byte at a time costs linear, not quadratic, copying.
        self._buf = bytearray()
        self._line_start = 0  # offset of the line being received
        self._lines = 0  # complete lines so far (the request line is line 1)
        self._scanned = 0  # bytes already checked for bare LF / line ends

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Add bytes; return ``(head, rest)`` once the head is complete, else None.

        ``head`` ends with the blank line's CRLF; ``rest`` is whatever followed
        it. Raises :class:`Reject` as soon as a limit is passed or a line ends
        with a bare LF.
        """
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data  # the usual case: a whole head in one read, no copy
        if not self.started:
            # RFC 9112 §2.2: a server SHOULD ignore at least one empty line
            # (CRLF) received prior to the request-line.
            skip = 0
            while buf.startswith(CRLF, skip):
                skip += 2
            if skip:
                buf = buf[skip:]
            if not buf or buf == b"\r":
                self._buf = bytearray(buf)
                return None
            self.started = True
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
        upto = len(buf) if end < 0 else end + 4
        self._check(buf, upto)
        if end < 0:
            if buf is not self._buf:
                self._buf = bytearray(buf)
            return None
        if isinstance(buf, bytearray):
            return bytes(buf[:upto]), bytes(buf[upto:])
        return buf[:upto], buf[upto:]

    def _check(self, buf: bytes | bytearray, upto: int) -> None:
        # RFC 9112 §2.2: "a recipient MAY recognize a single LF as a line
        # terminator" — we do not: a bare LF is how request smuggling hides a
        # line from one parser and shows it to another.
        start = self._scanned
        if buf.count(b"\n", start, upto) != buf.count(CRLF, max(0, start - 1), upto):
            raise Reject(400, "bare LF in request head")
        limits = self.limits
        if start == 0 and upto == len(buf) and buf.endswith(b"\r\n\r\n"):
            # Fast path, the usual case: a whole head in one read. Measure all
            # lines with a few C calls instead of a loop.
            lines = buf.split(CRLF)
            if len(lines[0]) > limits.request_line:
                raise Reject(414, "request line too long")
            if len(lines) > limits.fields + 3:  # request line, fields, "", ""
                raise Reject(431, "too many header fields")
            if max(map(len, lines)) > limits.field_size:
                if max(map(len, lines[1:])) > limits.field_size:
                    raise Reject(431, "header field too large")
            if limits.head is not None and upto > limits.head:
                raise Reject(431, "request head too large")
            self._scanned = upto
            return
        pos = self._line_start
        # Search only the new bytes (and one before, for a CR already seen):
        # rescanning a growing partial line would be quadratic.
        search = max(pos, start - 1)
        while True:
            eol = buf.find(CRLF, search, upto)
            if eol < 0:
                break
            self._measure(eol - pos)
            self._lines += 1
            pos = search = eol + 2
        self._line_start = pos
        self._scanned = upto
        if upto - pos > 1:  # a partial line (a lone trailing CR may yet become CRLF)
            self._measure(upto - pos)
        if self._lines > limits.fields + 2:  # request line + fields + blank line
            raise Reject(431, "too many header fields")
        if limits.head is not None and upto > limits.head:
            raise Reject(431, "request head too large")

    def _measure(self, length: int) -> None:
        if self._lines == 0:
            if length > self.limits.request_line:
                raise Reject(414, "request line too long")
        elif length > self.limits.field_size:
            raise Reject(431, "header field too large")


# The usual head in one regular expression: a known method, a target, HTTP/1.0
# or 1.1, and field lines. Everything it accepts passes every check of
# check_head() (the same grammar, narrowed to the methods and versions we
# serve), so a head it matches needs no other syntax check; anything else takes
# the slow path, which names the problem.
#
# Its field line is FIELD_LINE flattened: any run of SP, HTAB, VCHAR and
# obs-text splits into OWS field-value OWS, so the value part of FIELD_LINE
# accepts exactly [\t\x20-\x7e\x80-\xff]* -- as one character class it
# matches without backtracking, twice as fast on a browser's head.
#
# From Python 3.11 the quantifiers are possessive (``++``, ``*+``; TOKEN ends
# in ``+``, so one more makes it possessive): a name stops at the colon, a
# value at the CR, a field line at the next CRLF, so there is never anything
# to backtrack into, and the engine skips saving the states it would need for
# it (a fifth less time on a browser's 15-field head). 3.10 gets the same
# pattern without them.
_P = b"+" if sys.version_info >= (3, 11) else b""
_FAST_FIELD_LINE = TOKEN + _P + rb":[\t\x20-\x7e\x80-\xff]*" + _P
# The usual methods first: the alternation is tried in order.
_COMMON_METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")
_METHODS = rb"|".join(re.escape(method) for method in _COMMON_METHODS + tuple(
    sorted(KNOWN_METHODS.difference(_COMMON_METHODS))))
HEAD_RE = re.compile(
    rb"(" + _METHODS + rb") ([\x21-\x7e]+" + _P + rb") (HTTP/1\.[01])((?:\r\n" + _FAST_FIELD_LINE + rb")*" + _P
    + rb"\r\n)\r\n"
)

# (method, target, version, field block): the field block runs from the CRLF
# that ends the request line to the CRLF that ends the last field line, so
# every field name in it follows an LF.
SplitHead = tuple[bytes, bytes, bytes, bytes]


def match_head(data: bytes, max_size: int, max_fields: int) -> tuple[int, SplitHead] | None:
    """The fast path: a complete, well-formed head at the start of ``data``.

    Returns ``(length of the head, its parts)`` when ``data`` starts with a
    head of at most ``max_size`` bytes (so no line can pass a line limit)
    holding at most ``max_fields`` fields, all accepted by :data:`HEAD_RE`;
    None for anything else, which then goes through :class:`HeadScanner` and
    :func:`check_head`. One regular-expression match, in C.
    """
    match = HEAD_RE.match(data, 0, max_size)
    if match is None:
        return None
    split = match.groups()
    # One LF per field line, and the request line's.
    if split[3].count(b"\n") > max_fields + 1:
        return None
    return match.end(), split  # type: ignore[return-value]


def check_head(head: bytes) -> SplitHead:
    """Validate a complete head (from :meth:`HeadScanner.feed`) against RFC 9112.

    Returns its parts, as :func:`match_head` does. This runs before either
    library sees the head, on the raw bytes, because a library may already
    merge or drop repeated fields.
    """
    line_end = head.index(CRLF)
    method, sp, rest = head[:line_end].partition(b" ")
    target, sp2, version = rest.partition(b" ")
    if not sp or not sp2:
        # HTTP/0.9's "GET /" has no version: not spoken here.
        raise Reject(400, "malformed request line")
    if not TOKEN_RE.fullmatch(method):
        raise Reject(400, "invalid method")
    if not TARGET_RE.fullmatch(target):
        raise Reject(400, "invalid request target")
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        if VERSION_RE.fullmatch(version):
            raise Reject(505, "HTTP version not supported")
        raise Reject(400, "invalid HTTP version")
    if method not in KNOWN_METHODS:
        raise Reject(501, "method not implemented")
    fields = head[line_end + 2 : -2]
    if not FIELD_BLOCK_RE.fullmatch(fields):
        raise Reject(400, _field_problem(fields))
    return method, target, version, head[line_end:-2]


# The fields the server itself acts on, found in the raw (lower-cased) block,
# so no library's merging or dropping of repeated fields can hide one: those
# that decide framing and connection handling, and the proxy's X-Forwarded-*
# and RFC 7239 Forwarded (collected here so that applying them never walks
# every header; one more alternative costs a request without them nothing
# measurable: the engine rejects it on its first byte). The
# grammar check already guarantees "name:" has no whitespace before the colon
# and no value holds a CR. Values are taken whole (a greedy class is much
# faster than trimming inside the expression); semantics() trims what it reads.
SEMANTIC_FIELD_RE = re.compile(
    rb"\n(host|content-length|transfer-encoding|connection|upgrade|expect|x-forwarded-(?:for|proto|port)|forwarded):([^\r]*)"
)
# X-Forwarded-For and Forwarded values as sent (an address, an obfuscated
# identifier or a host keeps its case), read again only when the block has one.
_AS_SENT_RE = re.compile(rb"\n(?:x-forwarded-for|forwarded):([^\r]*)", re.IGNORECASE)
_AS_SENT = (b"x-forwarded-for", b"forwarded")

Forwarded = tuple[tuple[bytes, bytes], ...]
_NOT_FORWARDED: Forwarded = ()

# (body length: None for none, -1 for chunked; keep-alive; lower-cased
# Upgrade token when Connection names upgrade, else None; Expect: 100-continue;
# the X-Forwarded-* and Forwarded fields in order, names lower-cased, values
# trimmed of OWS)
Semantics = tuple[int | None, bool, bytes | None, bool, Forwarded]


def semantics(version: bytes, fields: bytes) -> Semantics:
    """Framing (RFC 9112 §6), connection handling and forwarding fields from a checked field block."""
    found = SEMANTIC_FIELD_RE.findall(fields.lower())
    http11 = version == b"HTTP/1.1"
    if len(found) == 1 and found[0][0] == b"host":
        # The usual request: one Host, nothing about the body or the connection.
        return None, http11, None, False, _NOT_FORWARDED
    if len(found) == 2 and found[0][0] == b"host":
        name, value = found[1]
        if name == b"content-length" and http11:
            # The usual upload: Host, then one Content-Length.
            length = value.strip(b"\t ")
            if length.isdigit() and len(length) <= 18:  # DIGITS_RE without the regex (bytes: ASCII digits only)
                return int(length) or None, True, None, False, _NOT_FORWARDED
        elif name == b"connection":
            # A browser's request: Host, then Connection with one usual token.
            token = value.strip(b" \t")
            if token == b"keep-alive" or token == b"close":
                return None, token == b"keep-alive", None, False, _NOT_FORWARDED
    hosts = 0
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    upgrade: bytes | None = None
    expect = False
    forwarded: list[tuple[bytes, bytes]] = []
    for name, value in found:
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            lengths.append(value.strip(b"\t "))
        elif name == b"transfer-encoding":
            # Only spaces are trimmed: an HTAB left in makes CODINGS_RE refuse it.
            codings.append(value.strip(b" "))
        elif name == b"connection":
            connection.append(value)
        elif name == b"upgrade":
            upgrade = value  # the last one counts
        elif name == b"expect":
            expect = value.strip(b" \t") == b"100-continue"
        else:
            forwarded.append((name, value.strip(b" \t")))
    body = _framing(http11, hosts, lengths, codings)
    if forwarded:
        forwarded = _as_sent(forwarded, fields)

    if connection:
        tokens = _tokens(connection)
        if http11:
            keep_alive = b"close" not in tokens
        else:
            keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    else:
        tokens = []
        keep_alive = http11
    upgrade_token = None
    if upgrade is not None and b"upgrade" in tokens:
        upgrade_token = upgrade.split(b",", 1)[0].strip(b" \t") or None
    return body, keep_alive, upgrade_token, expect and http11, tuple(forwarded)


def _as_sent(forwarded: list[tuple[bytes, bytes]], fields: bytes) -> list[tuple[bytes, bytes]]:
    """``forwarded`` with each X-Forwarded-For and Forwarded value as sent, not lower-cased."""
    if not any(name in _AS_SENT for name, _ in forwarded):
        return forwarded
    values = iter(_AS_SENT_RE.findall(fields))
    return [(name, next(values).strip(b" \t") if name in _AS_SENT else value) for name, value in forwarded]


def _field_problem(fields: bytes) -> str:
    """Name what is wrong with a field block that failed the grammar (error path only)."""
    for line in fields.split(CRLF):
        if not line or FIELD_LINE_RE.fullmatch(line):
            continue
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding"
        name, colon, _ = line.partition(b":")
        if not colon:
            return "header line without a colon"
        if name[-1:] in (b" ", b"\t"):
            return "whitespace before colon"
        if not TOKEN_RE.fullmatch(name):
            return "invalid header name"
        return "invalid byte in header value"
    return "invalid header block"


def _framing(http11: bool, hosts: int, lengths: list[bytes], codings: list[bytes]) -> int | None:
    """Host and body-framing rules over the raw fields; the body length (-1: chunked)."""
    # RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status
    # code to any HTTP/1.1 request message that lacks a Host header field and
    # to any request message that contains more than one Host header field".
    if hosts > 1 or (hosts == 0 and http11):
        raise Reject(400, "missing Host header" if hosts == 0 else "several Host headers")

    body: int | None = None
    if codings:
        # RFC 9112 §6.1: "A server MAY reject a request that contains both
        # Content-Length and Transfer-Encoding" — we always do: it is the
        # classic smuggling vector.
        if lengths:
            raise Reject(400, "both Content-Length and Transfer-Encoding")
        # RFC 9112 §6.1: a server that receives Transfer-Encoding in an
        # HTTP/1.0 request MUST treat the message as faulty.
        if not http11:
            raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
        # RFC 9112 §6.3: "If a Transfer-Encoding header field is present in a
        # request and the chunked transfer coding is not the final encoding,
        # ... the server MUST respond with the 400 (Bad Request) status code".
        #   Transfer-Encoding = #transfer-coding
        # Transfer-Encoding = #transfer-coding, here strictly: no empty list
        # elements and no HTAB (the libraries disagree on both, so neither may
        # decide).
        if not all(CODINGS_RE.fullmatch(value) for value in codings):
            raise Reject(400, "malformed Transfer-Encoding")
        members = _tokens(codings)
        if members[-1] != b"chunked":
            raise Reject(400, "Transfer-Encoding does not end in chunked")
        if len(members) > 1:
            # §6.1: chunked MUST NOT be applied twice; any other coding is one
            # we do not implement (a server SHOULD answer 501).
            if b"chunked" in members[:-1]:
                raise Reject(400, "chunked applied more than once")
            raise Reject(501, "transfer coding not implemented")
        body = -1
    elif lengths:
        # RFC 9110 §8.6:  Content-Length = 1*DIGIT. A repeated or list-valued
        # Content-Length is rejected even when the values agree (§8.6 allows
        # it, but two parsers may disagree on which one counts).
        if len(lengths) > 1:
            raise Reject(400, "repeated Content-Length")
        if not DIGITS_RE.fullmatch(lengths[0]):
            raise Reject(400, "invalid Content-Length")
        body = int(lengths[0]) or None

    return body


def _tokens(values: list[bytes]) -> list[bytes]:
    """Lower-cased members of comma-separated list fields (RFC 9110 §5.6.1)."""
    out = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if item:
                out.append(item)
    return out


def interpret(split: SplitHead, meaning: Semantics, headers: list[tuple[bytes, bytes]]) -> RequestHead:
    """Build the neutral head from the checked parts, their semantics and the library's fields.

    ``headers`` have lower-cased names and values stripped of OWS, as both
    adapters deliver them.
    """
    method, target, version, _ = split
    if target[0] == _SLASH and _HASH not in target:  # origin-form, the usual: "/path?query"
        raw_path, _, query = target.partition(b"?")
    else:
        raw_path, query, authority = _split_target(method, target)
        if authority is not None:
            # RFC 9112 §3.2.2: with an absolute-form target the server ignores
            # Host and uses the target's authority: the app sees it as Host.
            headers = [(name, authority if name == b"host" else value) for name, value in headers]
            if all(name != b"host" for name, _ in headers):
                headers.append((b"host", authority))  # HTTP/1.0 may send no Host
    path = raw_path.decode("ascii")
    if _PERCENT in raw_path:  # most paths have no escapes: skip unquote's work for them
        path = unquote(path)
    _, keep_alive, upgrade, expect_continue, forwarded = meaning
    return RequestHead(method.decode("ascii"), raw_path, path, query, VERSIONS[version], headers,
                       keep_alive, upgrade, expect_continue, forwarded)


VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}

# Bytes looked for as integers: on Python 3.11, ``b"#" in data`` first tries
# the argument as an integer and formats a TypeError it then discards, which
# costs more than the search; ``ord("#") in data`` goes straight to memchr.
_SLASH, _HASH, _PERCENT = ord("/"), ord("#"), ord("%")


def _split_target(method: bytes, target: bytes) -> tuple[bytes, bytes, bytes | None]:
    """Path, query and (absolute-form only, else None) authority of a request-target (RFC 9112 §3.2)."""
    authority: bytes | None = None
    if target[0] != 0x2F:  # not origin-form ("/...")
        if target == b"*":
            # asterisk-form = "*", only for a server-wide OPTIONS.
            if method != b"OPTIONS":
                raise Reject(400, "asterisk-form target outside OPTIONS")
            return b"*", b"", None
        # absolute-form = absolute-URI; only http(s) URIs make sense here.
        lowered = target[:8].lower()
        if lowered.startswith(b"http://"):
            rest = target[7:]
        elif lowered.startswith(b"https://"):
            rest = target[8:]
        else:
            raise Reject(400, "invalid request target")
        slash = rest.find(b"/")
        question = rest.find(b"?")
        if question >= 0 and (slash < 0 or question < slash):
            authority, target = rest[:question], b"/" + rest[question:]
        elif slash >= 0:
            authority, target = rest[:slash], rest[slash:]
        else:
            authority, target = rest, b"/"
        if not authority or b"@" in authority:
            # No host, or userinfo (deprecated by RFC 9110 §4.2.4 for http).
            raise Reject(400, "invalid authority in request target")
    if b"#" in target:
        # The fragment is never part of a request-target (RFC 9112 §3.2).
        raise Reject(400, "fragment in request target")
    path, _, query = target.partition(b"?")
    return path, query, authority
