"""The gunicorn worker `idp serve` runs: gthread, with the issuer's defences at its edge.

Why not gunicorn's workers as they are (gunicorn 27, read in `gunicorn/workers/gthread.py`):
- the sync worker serves one connection at a time and waits on it with blocking reads: two
  clients sending a header byte every 0.5 s held two workers, and JWKS timed out for 45 s;
- the gthread worker parks idle kept-alive connections in its event loop, but a new
  connection's thread first waits up to 5 s for a first byte (a silent connection holds a thread
  that long), and once a byte has come the thread reads the whole request head with blocking
  reads and no deadline: a client trickling its headers keeps a thread for as long as it likes,
  and a few such clients hold every thread.

So this worker reads the request head itself, without blocking, each time the socket turns
readable, and hands the connection to gunicorn's parser only when the whole head is buffered
(or cannot become valid): until then the connection waits in the event loop exactly like a
kept-alive one and costs no thread. A head still incomplete HEADER_READ_TIMEOUT after its first
byte is answered 408 and closed; a connection that goes silent is closed by gunicorn after
KEEPALIVE seconds. The body (at most 64 KiB of JSON, which the app reads only after checking the
CI secret) must then arrive within BODY_READ_TIMEOUT: later reads fail and the app answers 408.
What is left (many connections from one address, each within these bounds) is the job of the
proxy in front: README "Production: what the proxy in front must do".

Protocol errors that gunicorn answers itself are written in the issuer's JSON error shape.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from gunicorn import util as gunicorn_util
from gunicorn.workers.gthread import _DEFER, ThreadWorker
from werkzeug.exceptions import RequestTimeout

# Header limits: a request token is about 1-2 KiB; nothing legitimate is larger.
LIMIT_REQUEST_LINE = 8190
LIMIT_REQUEST_FIELDS = 50
LIMIT_REQUEST_FIELD_SIZE = 8190
# The whole head buffered before parsing: legitimate heads are 1-3 KiB, and the buffer of a
# connection still sending its head must stay small (WORKER_CONNECTIONS of them per worker).
HEAD_MAX = 64 * 1024

# The request head (request line and headers) must be complete this long after its first
# byte: a few KiB, sent in one write by every real client; 5 s allows a very slow link.
HEADER_READ_TIMEOUT = 5.0
# The body must have arrived this long after the head (build contexts are a few KiB).
BODY_READ_TIMEOUT = 10.0
# Idle kept-alive connections, and new ones that have sent nothing yet, are closed after this
# many seconds; they wait in the event loop, not in a thread.
KEEPALIVE = 5
# Threads per worker process: requests being served (head complete) at once. Signing is
# CPU-bound, so more threads only queue on the GIL; more than one, so that a request waiting on
# Redis or reading a slow CI server's body never holds the whole process (bench/README.md).
THREADS = 4
# Connections per worker process, idle or mid-head included, before it stops accepting.
WORKER_CONNECTIONS = 1000

_HEAD_END = b"\r\n\r\n"


# What gunicorn refuses itself, before the app sees the request (a malformed request line,
# headers over the limits above, a head or body too slow), answered in the issuer's JSON error
# shape instead of gunicorn's HTML page. Fixed descriptions: the input is never echoed back.
_PROTOCOL_ERRORS = {
    400: ("invalid_request", "the HTTP request is malformed: send a well-formed HTTP/1.1 request"),
    403: ("access_denied", "the request is forbidden"),
    408: (
        "request_timeout",
        f"the request head did not arrive within {HEADER_READ_TIMEOUT:g} s: send the whole "
        "request at once",
    ),
    414: (
        "request_too_large",
        f"the request line is over {LIMIT_REQUEST_LINE} bytes: send fewer or shorter parameters",
    ),
    417: ("invalid_request", "the Expect header is not supported: send the request without it"),
    431: (
        "request_too_large",
        f"the request headers are too large (at most {LIMIT_REQUEST_FIELDS} headers of "
        f"{LIMIT_REQUEST_FIELD_SIZE} bytes): send a shorter token",
    ),
    501: ("invalid_request", "that transfer coding is not supported: send a plain body"),
}


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str = "") -> None:
    from idp.views.headers import SECURITY_HEADERS

    code, description = _PROTOCOL_ERRORS.get(
        status_int, ("server_error", "the issuer failed unexpectedly; see its logs")
    )
    body = json.dumps({"error": code, "error_description": description}).encode()
    head = [
        f"HTTP/1.1 {status_int} {reason}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS.items()),
    ]
    gunicorn_util.write_nonblock(sock, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


class BodyReadTimeout(RequestTimeout):
    """Raised inside the app by a body read past BODY_READ_TIMEOUT: a JSON 408."""

    description = (
        f"the request body did not arrive within {BODY_READ_TIMEOUT:g} s of its headers: "
        "send the whole request at once"
    )


class _BodyDeadline:
    """The connection's socket as gunicorn's body reader sees it: every read ends by the
    deadline (a per-read socket timeout alone would let a trickle go on forever)."""

    def __init__(self, sock: Any, deadline: float, req: Any) -> None:
        self._sock = sock
        self.deadline = deadline
        self.req = req
        self.expired = False

    def recv(self, size: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            self._sock.settimeout(remaining)
            try:
                data: bytes = self._sock.recv(size)
                return data
            except TimeoutError:
                pass
            finally:
                self._sock.settimeout(None)
        # Where the next request would start is unknown: the answer says Connection: close.
        self.expired = True
        self.req.must_close = True
        raise BodyReadTimeout()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _head_done(head: bytes) -> bool:
    # Complete, or sure to be refused by gunicorn's parser at once without reading more: it
    # refuses any bare LF (RFC 9112 section 2.2) as soon as it sees one.
    return _HEAD_END in head or head.count(b"\n") != head.count(b"\r\n")


class JsonErrorWorker(ThreadWorker):
    """gunicorn's gthread worker, reading request heads without holding a thread, with read
    deadlines, answering protocol errors in the issuer's JSON shape.

    gunicorn writes its own error answers with `gunicorn.util.write_error`, which the worker
    calls by module attribute; it is replaced in the worker process only, once, after the fork.
    """

    def init_process(self) -> None:
        gunicorn_util.write_error = write_json_error
        super().init_process()

    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl or conn.is_http2:  # never configured by `idp serve`
            return super().handle(conn)
        try:
            state = self._read_head(conn)
        except OSError:  # reset by the peer: nothing to answer
            return False
        if state == "wait":
            # Back to the event loop until the socket is readable again; a stopping worker
            # closes instead (gthread would hand a deferred connection holding buffered bytes
            # straight back to a thread, over and over, until the graceful timeout).
            return _DEFER if self.alive else False
        if state == "too large":
            write_json_error(conn.sock, 431, "Request Header Fields Too Large")
            return False
        if state == "late":
            write_json_error(conn.sock, 408, "Request Timeout")
            return False
        conn.data_ready = True  # the head is buffered: gthread must not wait for the socket
        return super().handle(conn)

    def _read_head(self, conn: Any) -> Literal["ready", "wait", "late", "too large"]:
        """Add what the socket holds to the connection's buffered head, without blocking.

        "ready" when the parser can take over without waiting (the head is complete, sure to
        be refused, or the peer closed), "wait" for more in the event loop, "late" past
        HEADER_READ_TIMEOUT, "too large" past HEAD_MAX.
        """
        conn.init()  # plain HTTP/1: only creates the parser, which reads nothing yet
        unreader = conn.parser.unreader
        head = unreader.take_buffered()
        eof = False
        try:
            conn.sock.setblocking(False)
            while not _head_done(head) and len(head) <= HEAD_MAX:
                try:
                    data = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                if not data:
                    eof = True
                    break
                head += data
        finally:
            conn.sock.setblocking(True)
            unreader.unread(head)
        if _head_done(head) or eof:
            conn.idp_head_since = None
            return "ready"
        if len(head) > HEAD_MAX:
            return "too large"
        if not head:
            return "wait"  # nothing sent yet: gunicorn closes it after KEEPALIVE seconds
        now = time.monotonic()
        since = getattr(conn, "idp_head_since", None)
        if since is None:
            conn.idp_head_since = since = now
        if now - since > HEADER_READ_TIMEOUT:
            return "late"
        return "wait"

    def handle_request(self, req: Any, conn: Any) -> bool:
        unreader = conn.parser.unreader
        sock = unreader.sock
        guarded = _BodyDeadline(sock, time.monotonic() + BODY_READ_TIMEOUT, req)
        unreader.sock = guarded
        try:
            keepalive = bool(super().handle_request(req, conn))
        finally:
            unreader.sock = sock
        return keepalive and not guarded.expired
