"""Lab endpoints: the VPC host's HTTP and UDP echo servers, and the clients environments run.

Contract: servers tell every client the address it came from (so tests can see the SNAT), and
clients are bounded by a timeout and exit 0 only when the exchange completed.
  python -m eniplane.labserve serve --bind IP --name N [--http-port 80] [--udp-port 7]
  python -m eniplane.labserve http HOST PORT   -> prints the body
  python -m eniplane.labserve udp HOST PORT MSG -> prints the echo
"""

from __future__ import annotations

import argparse
import http.server
import socket
import sys
import threading


def serve(bind: str, name: str, http_port: int, udp_port: int) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{name} saw {self.client_address[0]}:{self.client_address[1]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((bind, http_port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((bind, udp_port))
    while True:
        data, peer = u.recvfrom(65535)
        u.sendto(f"{name} saw {peer[0]}:{peer[1]} ".encode() + data, peer)


def http_get(host: str, port: int, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while True:
            b = s.recv(4096)
            if not b:
                break
            chunks.append(b)
    resp = b"".join(chunks).decode(errors="replace")
    head, _, body = resp.partition("\r\n\r\n")
    if not head.startswith("HTTP/1.0 200"):
        raise OSError(f"unexpected response {head.splitlines()[:1]}")
    return body


def udp_echo(host: str, port: int, msg: str, timeout: float) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(msg.encode(), (host, port))
        data, _ = s.recvfrom(65535)
    return data.decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="labserve")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--http-port", type=int, default=80)
    s.add_argument("--udp-port", type=int, default=7)
    h = sub.add_parser("http")
    h.add_argument("host")
    h.add_argument("port", type=int)
    h.add_argument("--timeout", type=float, default=3.0)
    u = sub.add_parser("udp")
    u.add_argument("host")
    u.add_argument("port", type=int)
    u.add_argument("msg")
    u.add_argument("--timeout", type=float, default=3.0)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "serve":
            serve(a.bind, a.name, a.http_port, a.udp_port)
        elif a.cmd == "http":
            sys.stdout.write(http_get(a.host, a.port, a.timeout))
        else:
            sys.stdout.write(udp_echo(a.host, a.port, a.msg, a.timeout) + "\n")
    except OSError as e:
        sys.stderr.write(f"{a.cmd} {a.host}:{a.port}: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
