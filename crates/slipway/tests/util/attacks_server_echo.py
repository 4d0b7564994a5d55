"""The application behind the preview-URL attack tests (crates/slipway/tests/attacks_server.rs).

Listens on two ports: ADMIN (listed first, not exposed), which answers "internal admin port",
and HTTP (exposed), which answers:
  /health    200
  /echo      the request's headers as JSON ({lowercase name: [values]})
  /hop       a response with hop-by-hop headers and cookies the router must filter
  /hang      never answers (until the client leaves)
  /trickle   answers its head and one byte, then nothing
  /flood     a body of 1 GiB, written as fast as the client takes it
  /upgrade   101 to `x-echo`, then echoes every byte back
"""
import json
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Admin(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"internal admin port"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body, extra=()):
        self.send_response(200)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self.reply(b"ok")
        elif self.path == "/echo":
            headers = {}
            for name, value in self.headers.items():
                headers.setdefault(name.lower(), []).append(value)
            self.reply(json.dumps(headers).encode())
        elif self.path == "/hop":
            self.reply(
                b"hop",
                [
                    ("Connection", "X-Resp-Hop"),
                    ("X-Resp-Hop", "1"),
                    ("Keep-Alive", "timeout=99"),
                    ("X-End-To-End", "kept"),
                    ("Set-Cookie", "slipway_session=planted; Domain=localhost; Path=/"),
                    ("Set-Cookie", "app=ok; Path=/"),
                ],
            )
        elif self.path == "/hang":
            time.sleep(3600)
        elif self.path == "/trickle":
            # The head and one byte of a thousand, then nothing: a response that never ends.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"t")
            self.wfile.flush()
            time.sleep(3600)
        elif self.path == "/flood":
            # More than any buffer holds: a client that never reads stops it mid-way.
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            chunk = b"f" * 65536
            try:
                for _ in range((1 << 30) // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                return
        elif self.path == "/upgrade":
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "x-echo")
            self.end_headers()
            self.wfile.flush()
            while True:
                data = self.connection.recv(4096)
                if not data:
                    break
                self.connection.sendall(data)
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def main():
    admin, http = int(sys.argv[1]), int(sys.argv[2])
    ThreadingHTTPServer.daemon_threads = True
    a = ThreadingHTTPServer(("127.0.0.1", admin), Admin)
    threading.Thread(target=a.serve_forever, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", http), App).serve_forever()


if __name__ == "__main__":
    main()
