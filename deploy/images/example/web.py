"""Example web app of deploy/compose.yaml: answers every GET with its hostname (the
container's id, which is its announce ID) and environment; with DB_ADDR=host:port it
also asks the "database" there (through the sidecar lb, at 127.0.0.1) and shows its reply."""

import http.server
import os
import socket

PORT = int(os.environ.get("PORT", "8080"))
ENV = os.environ.get("ANNOUNCE_PATH", "/?/?/?").split("/")[3]
DB_ADDR = os.environ.get("DB_ADDR", "")


def ask_db() -> str:
    host, _, port = DB_ADDR.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.sendall(b"ping")
            return sock.recv(4096).decode(errors="replace")
    except OSError as exc:
        return f"unreachable ({exc})"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {socket.gethostname()} ({ENV})\n"
        if DB_ADDR:
            body += f"db at {DB_ADDR}: {ask_db()}\n"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


http.server.ThreadingHTTPServer(("", PORT), Handler).serve_forever()
