"""Stands in for the StatsD exporter in the loopback production test: receives StatsD over UDP, appends each
line to a file, and answers the exporter's healthcheck URL (``/metrics``) over HTTP.

    python statsd_sink.py UDP_PORT HTTP_PORT OUT_FILE
"""

from __future__ import annotations

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(udp_port: int, http_port: int, out: str) -> None:
    received = [0]

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = f"statsd_sink_packets {received[0]}\n".encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    threading.Thread(target=ThreadingHTTPServer(("127.0.0.1", http_port), Metrics).serve_forever, daemon=True).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", udp_port))
    with open(out, "a", encoding="utf-8") as sink:
        while True:
            data, _ = sock.recvfrom(65535)
            received[0] += 1
            sink.write(data.decode("utf-8", errors="replace").rstrip("\n") + "\n")
            sink.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
