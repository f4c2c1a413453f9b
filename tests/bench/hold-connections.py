#!/usr/bin/env python3
"""Opens COUNT idle SIP connections to an SBC and holds them (sbc-bench.sh).

    hold-connections.py tls|wss HOST PORT COUNT

TLS: a TLS handshake (the SBC's certificate is self-signed: not verified).
WSS: TLS, then the RFC 7118 WebSocket handshake with subprotocol `sip`.
Prints `open N` once every connection is up (N may be below COUNT if some
failed; the first errors go to stderr), then a double-CRLF keepalive every
60 s on each, so none reaches the SBC's idle timeout, until stdin closes.
Only the standard library: no package to install.
"""

import asyncio
import base64
import os
import ssl
import sys

BATCH = 200  # handshakes in flight at once


async def open_one(kind, host, port, context):
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    if kind == "wss":
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
            ).encode()
        )
        answer = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in answer.split(b"\r\n", 1)[0]:
            raise ConnectionError(answer.split(b"\r\n", 1)[0].decode(errors="replace"))
    return writer


def ping(kind):
    if kind == "tls":
        return b"\r\n\r\n"
    # One masked WebSocket text frame carrying the double CRLF.
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"\r\n\r\n"))
    return bytes([0x81, 0x80 | 4]) + mask + payload


async def main():
    kind, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    writers, errors = [], 0
    for start in range(0, count, BATCH):
        batch = min(BATCH, count - start)
        results = await asyncio.gather(
            *(open_one(kind, host, port, context) for _ in range(batch)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                errors += 1
                if errors <= 5:
                    print(f"connection failed: {result!r}", file=sys.stderr)
            else:
                writers.append(result)
    print(f"open {len(writers)}", flush=True)
    stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    while True:
        done, _ = await asyncio.wait({stdin_closed}, timeout=60)
        if done:
            return
        for writer in writers:
            writer.write(ping(kind))


if __name__ == "__main__":
    asyncio.run(main())
