"""Example TCP service of deploy/compose.yaml, standing in for the database: answers each
chunk it reads with "db <hostname> says: <chunk>"."""

import os
import socket
import socketserver

PORT = int(os.environ.get("PORT", "5432"))
PREFIX = f"db {socket.gethostname()} says: ".encode()


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(PREFIX + data)


socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("", PORT), Handler).serve_forever()
