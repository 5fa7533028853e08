"""Finding the end of a chunked request body, with strict chunk syntax.

Sans-I/O. The libraries decode chunked bodies; this scanner walks the same
bytes only from one chunk-size line to the next (it skips chunk data by
length), so it costs a few operations per chunk, not per byte. It gives both
parser adapters the same answer on every malformed chunk, and tells them
exactly where the body ends so a pipelined request after it is never parsed
as part of it.
"""

from __future__ import annotations

import re

from server_core.http.head import FIELD_LINE_RE, Reject

# RFC 9112 §7.1:
#   chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
#   chunk-size = 1*HEXDIG
#   last-chunk = 1*("0") [ chunk-ext ] CRLF
# §7.1.1:
#   chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-name = token
#   chunk-ext-val  = token / quoted-string
# Sixteen hex digits already exceed any body we would accept; more is an
# overflow attempt.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# BWS ("bad whitespace") is refused rather than skipped: llhttp refuses it, h11
# skips it, and a chunk line two parsers read differently is a smuggling
# vector, so neither parser gets to decide.
CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)

_SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE = range(5)


class ChunkScanner:
    """Walks a chunked body; :meth:`feed` returns how many bytes belong to it."""

    __slots__ = ("_state", "_remaining", "_line", "_max_line", "_trailers", "_max_trailers", "trailer_at")

    def __init__(self, max_line: int = 8190, max_trailers: int = 100) -> None:
        self._state = _SIZE
        self._remaining = 0
        self._line = b""  # a partial size or trailer line
        self._max_line = max_line
        self._trailers = 0
        self._max_trailers = max_trailers
        # Where the trailer section starts in the data of the last feed() (0
        # when it had started before), -1 when that data held none of it.
        self.trailer_at = -1

    @property
    def done(self) -> bool:
        """True once the last chunk and the trailer section were seen."""
        return self._state == _DONE

    def feed(self, data: bytes) -> int:
        """Scan ``data``; return how many of its bytes are part of the body.

        Less than ``len(data)`` only when the body ended inside ``data``.
        Raises :class:`Reject` on malformed chunk syntax.
        """
        pos = 0
        end = len(data)
        self.trailer_at = 0 if self._state == _TRAILER else -1
        while pos < end and self._state != _DONE:
            state = self._state
            if state == _DATA:
                step = min(self._remaining, end - pos)
                self._remaining -= step
                pos += step
                if self._remaining == 0:
                    self._state = _DATA_CRLF
                    self._line = b""
            elif state == _DATA_CRLF:
                # chunk-data is followed by exactly CRLF.
                need = 2 - len(self._line)
                got = data[pos : pos + need]
                self._line += got
                pos += len(got)
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise Reject(400, "chunk data not followed by CRLF")
                    self._line = b""
                    self._state = _SIZE
            else:
                pos = self._scan_line(data, pos, end)
        return pos

    def _scan_line(self, data: bytes, pos: int, end: int) -> int:
        eol = data.find(b"\n", pos, end)
        if eol < 0:
            self._line += data[pos:end]
            if len(self._line) > self._max_line:
                raise Reject(400, "chunk line too long")
            # A CR can only end a line: one followed by anything but LF is
            # refused at once (llhttp does, and both parsers must agree).
            if b"\r" in self._line[:-1]:
                raise Reject(400, "bare CR in chunked body")
            return end
        line = self._line + data[pos:eol + 1] if self._line else data[pos:eol + 1]
        self._line = b""
        if len(line) > self._max_line + 2:
            raise Reject(400, "chunk line too long")
        if len(line) < 2 or line[-2] != 0x0D:
            raise Reject(400, "bare LF in chunked body")
        line = line[:-2]
        if self._state == _SIZE:
            match = CHUNK_LINE_RE.fullmatch(line)
            if match is None:
                raise Reject(400, "invalid chunk size line")
            size = int(match.group(1), 16)
            if size:
                self._remaining = size
                self._state = _DATA
            else:
                self._state = _TRAILER
                self.trailer_at = eol + 1
        elif line:
            # trailer-section = *( field-line CRLF ), same grammar as headers.
            self._trailers += 1
            if self._trailers > self._max_trailers:
                raise Reject(431, "too many trailer fields")
            if not FIELD_LINE_RE.fullmatch(line):
                raise Reject(400, "invalid trailer field")
        else:
            self._state = _DONE
        return eol + 1
