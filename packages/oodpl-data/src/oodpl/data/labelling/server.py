"""A small OpenAI-compatible chat-completions server on loopback, for tests and offline demos.

``POST /v1/chat/completions`` answers with a :class:`GoldResponder` (synthetic gold reward) or
any ``responder(messages) -> str``; ``GET /v1/models`` lists one model. It binds to a loopback
address only. For tests it counts requests (:class:`ServerStats`), records request bodies,
tracks concurrency, can inject faults (HTTP 400/429/500/503, unparseable "garbage" text, an empty
reply, a body that is not JSON, a reply without choices) by rule, can delay every request, can
*hold* every request after the first ``hold_after`` until :meth:`JudgeServer.release`, and can
demand an API key (``Authorization: Bearer <key>``; compared in constant time, never logged).

Run a demo server: ``python -m oodpl.data.labelling --port 8000`` and point a client at
``http://127.0.0.1:8000/v1``.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .accounting import estimate_prompt_tokens, estimate_tokens
from .gold_responder import GoldResponder

log = logging.getLogger("oodpl.data.labelling.server")

FAULT_KINDS = ("400", "429", "500", "503", "garbage", "empty", "bad_json", "no_choices")
GARBAGE_REPLY = "Both answers have their merits and I would rather not choose.\nIt depends."
MODEL_NAME = "oodpl-gold-judge"

FaultRule = Callable[[int, Mapping[str, Any]], "str | None"]


def fail_first(n: int, kind: str = "429") -> FaultRule:
    """Fault ``kind`` on the first ``n`` requests (by arrival)."""
    _check_kind(kind)
    return lambda index, body: kind if index < n else None


def fail_every(n: int, kind: str = "garbage") -> FaultRule:
    """Fault ``kind`` on every ``n``-th request (indices n−1, 2n−1, ...)."""
    _check_kind(kind)
    if n < 1:
        raise ValueError(f"fail_every needs n >= 1, got {n}")
    return lambda index, body: kind if index % n == n - 1 else None


def fail_when(substring: str, kind: str = "garbage") -> FaultRule:
    """Fault ``kind`` whenever a message contains ``substring``."""
    _check_kind(kind)
    return lambda index, body: (
        kind
        if any(substring in str(m.get("content", "")) for m in body.get("messages", []))
        else None
    )


def _check_kind(kind: str) -> None:
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")


class ServerStats:
    """Thread-safe counters. ``requests``: chat-completion POSTs received (after auth);
    ``answered``: HTTP 200 completions sent (garbage/empty included); ``faults``: by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.answered = 0
        self.auth_failures = 0
        self.faults: Counter = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict[str, Any]] = []

    def begin(self, body: dict[str, Any]) -> int:
        with self._lock:
            index = self.requests
            self.requests += 1
            self.bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return index

    def end(self, answered: bool, fault: str | None) -> None:
        with self._lock:
            self.in_flight -= 1
            self.answered += int(answered)
            if fault is not None:
                self.faults[fault] += 1

    def auth_failed(self) -> None:
        with self._lock:
            self.auth_failures += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "answered": self.answered,
                "auth_failures": self.auth_failures,
                "faults": dict(self.faults),
                "max_in_flight": self.max_in_flight,
            }


class JudgeServer:
    """The loopback server; use as a context manager or via :func:`serve_in_thread`."""

    def __init__(
        self,
        responder: GoldResponder | Callable[[Sequence[Mapping[str, Any]]], str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Sequence[FaultRule] = (),
        delay_s: float = 0.0,
        hold_after: int | None = None,
        expected_api_key: str | None = None,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"host {host!r} is not a loopback address; this server is local only")
        if responder is None:
            from oodpl.data.synthetic import SyntheticConfig

            responder = GoldResponder(SyntheticConfig().gold_reward())
        self._reply = responder.reply if isinstance(responder, GoldResponder) else responder
        self.faults = tuple(faults)
        self.delay_s = float(delay_s)
        self.hold_after = hold_after
        self._expected_auth = None if expected_api_key is None else f"Bearer {expected_api_key}"
        self._gate = threading.Event()
        if hold_after is None:
            self._gate.set()
        self.stats = ServerStats()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: log.debug(  # type: ignore[method-assign]
            "connection from %s ended with an error", address, exc_info=True
        )
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> JudgeServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="oodpl-judge-server", daemon=True
        )
        self._thread.start()
        return self

    def release(self) -> None:
        """Let held requests (``hold_after``) proceed, now and from now on."""
        self._gate.set()

    def stop(self) -> None:
        self._gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called from handler threads) --
    def authorised(self, header: str | None) -> bool:
        if self._expected_auth is None:
            return True
        return hmac.compare_digest((header or "").encode(), self._expected_auth.encode())

    def complete(self, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        index = self.stats.begin(body)
        fault = next((k for k in (rule(index, body) for rule in self.faults) if k), None)
        answered = False
        try:
            if self.hold_after is not None and index >= self.hold_after:
                self._gate.wait()
            if self.delay_s:
                time.sleep(self.delay_s)
            if fault in ("400", "429", "500", "503"):
                kind = {"400": "invalid_request_error", "429": "rate_limit_error"}.get(
                    fault, "server_error"
                )
                error = {"error": {"message": f"injected HTTP {fault}", "type": kind}}
                return int(fault), json.dumps(error).encode(), {}
            if fault == "bad_json":
                return 200, b'{"id": "broken", "choices": [', {}
            messages = body["messages"]
            content = {"garbage": GARBAGE_REPLY, "empty": ""}.get(fault or "")
            if content is None:
                content = self._reply(messages)
            payload = {
                "id": f"chatcmpl-oodpl-{index}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", MODEL_NAME),
                "choices": []
                if fault == "no_choices"
                else [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": estimate_prompt_tokens(messages),
                    "completion_tokens": estimate_tokens(content),
                    "total_tokens": estimate_prompt_tokens(messages) + estimate_tokens(content),
                },
            }
            answered = True
            return 200, json.dumps(payload).encode(), {}
        finally:
            self.stats.end(answered, fault)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _make_handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm
            # and delayed ACKs add ~40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:  # request line only, no headers
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, data: bytes, headers: Mapping[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client went away (killed)
                self.close_connection = True

        def _error(self, status: int, message: str) -> None:
            body = {"error": {"message": message, "type": "invalid_request_error"}}
            self._send(status, json.dumps(body).encode())

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                data = {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]}
                self._send(200, json.dumps(data).encode())
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path}")
            if not server.authorised(self.headers.get("Authorization")):
                server.stats.auth_failed()
                return self._error(401, "invalid API key")
            try:
                body = json.loads(raw.decode("utf-8"))
                if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                    raise ValueError("body needs a 'messages' list")
            except (ValueError, UnicodeDecodeError) as err:
                return self._error(400, f"bad request body: {err}")
            status, data, headers = server.complete(body)
            self._send(status, data, headers)

    return Handler


@contextmanager
def serve_in_thread(
    responder: GoldResponder | Callable[[Sequence[Mapping[str, Any]]], str] | None = None,
    **kwargs: Any,
) -> Iterator[JudgeServer]:
    """Start a :class:`JudgeServer` on a free loopback port; stop it on exit."""
    server = JudgeServer(responder, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m oodpl.data.labelling``: serve the gold judge until interrupted."""
    from oodpl.data.synthetic import DEFAULT_DOMAINS, SyntheticConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS))
    parser.add_argument("--verdict-temperature", type=float, default=0.0)
    args = parser.parse_args(argv)
    gold = SyntheticConfig(domains=tuple(args.domains)).gold_reward()
    responder = GoldResponder(gold, verdict_temperature=args.verdict_temperature)
    with JudgeServer(responder, host=args.host, port=args.port) as server:
        print(f"oodpl gold judge serving at {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
