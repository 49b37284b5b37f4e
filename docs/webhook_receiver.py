"""A Taskyard webhook receiver: verifies the signature, refuses old timestamps, dedupes deliveries.

    TASKYARD_WEBHOOK_SECRET=... python docs/webhook_receiver.py --port 8099 [--log deliveries.jsonl]

Taskyard signs each try of a delivery with the api's TASKYARD_API_WEBHOOK_SECRET:

    Taskyard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

Check the HMAC over the raw bytes (not re-serialised JSON), compare in constant time, and refuse a
`t` further than TOLERANCE_S from your clock: a captured request replayed later fails. Taskyard
delivers at least once (a try whose answer was lost is sent again, with a new `t`), so act on a
`Taskyard-Delivery` id once. Answer 2xx quickly; anything else is retried with backoff.
Standard library only: copy it.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300


class BadSignature(ValueError):
    pass


def verify(
    secret: bytes, header: str, body: bytes, now: float | None = None, tolerance_s: float = TOLERANCE_S
) -> int:
    """The signed timestamp if `header` signs `body` with `secret` within `tolerance_s`; else BadSignature."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        t = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        raise BadSignature("malformed Taskyard-Signature header") from None
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise BadSignature("signature does not match (wrong secret or altered body)")
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        raise BadSignature(f"timestamp {t} is more than {tolerance_s:.0f}s from now (a replay?)")
    return t


def make_handler(secret: bytes, log_path: str | None):
    seen: set[str] = set()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                verify(secret, self.headers.get("Taskyard-Signature", ""), body)
            except BadSignature as exc:
                self._answer(401, str(exc))
                return
            delivery = self.headers.get("Taskyard-Delivery", "")
            if delivery not in seen:  # at least once on the wire, once here
                seen.add(delivery)
                event = json.loads(body)
                print(f"{event['event']}: job {event['job']['id']} ({delivery})", flush=True)
                if log_path:
                    with open(log_path, "a") as out:
                        out.write(json.dumps(event) + "\n")
            self._answer(200, "ok")

        def _answer(self, code: int, text: str) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet: deliveries are printed above
            pass

    return Receiver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--log", help="append each verified delivery (JSON) to this file")
    args = parser.parse_args()
    secret = os.environ.get("TASKYARD_WEBHOOK_SECRET")
    if not secret:
        print("set TASKYARD_WEBHOOK_SECRET (the api's TASKYARD_API_WEBHOOK_SECRET)", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer((args.host, args.port), make_handler(secret.encode(), args.log))
    print(f"listening on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
