"""An HTTP service: greets with the rendered config's greeting, shows the seed data, and counts
visits in the environment's own PostgreSQL database (through psql, to need nothing installed)."""
import argparse
import json
import os
import subprocess
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def load():
    with open(os.environ["CONFIG"], "rb") as f:
        config = tomllib.load(f)
    seed_path = os.path.join(os.environ["SLIPWAY_DATA_DIR"], "seed.json")
    with open(seed_path, encoding="utf-8") as f:
        seed = json.load(f)
    return config, seed


def count_visit():
    """Records a visit; returns how many this environment's database has seen."""
    sql = "INSERT INTO visits DEFAULT VALUES; SELECT count(*) FROM visits;"
    done = subprocess.run(
        ["psql", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, timeout=10,
    )
    if done.returncode != 0:
        return f"unavailable ({done.stderr.strip()[:200]})"
    return done.stdout.strip().splitlines()[-1]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok\n"
        else:
            config, seed = load()
            body = (
                f"{config['greeting']} ({config['environment']}, "
                f"workers={os.environ.get('WORKERS')}, seeded_at={seed['seeded_at']:.0f}, "
                f"visits={count_visit()}, database={os.environ.get('PGDATABASE')})\n"
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    load()  # fail fast, before listening, when the config or seed is missing
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()
