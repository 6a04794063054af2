"""The demo stack's API: `GET /api/status` answers 200 with the database's state when the
database answers and the migration has run, 503 otherwise. `POST /api/records` appends its body
(a line of text) to the database's records, `GET /api/records` lists them (one per line): the
stack's state, which an update must keep. It connects as its own database user (DB_USER, with
the service password), not as the administrator."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

PASSWORD_FILE = os.environ.get("DB_PASSWORD_FILE", "/run/secrets/db-password")
USER = os.environ.get("DB_USER") or None


def connect():
    password = open(PASSWORD_FILE).read().strip()
    return redis.Redis(
        host=os.environ.get("DB_HOST", "db"), port=6379, username=USER, password=password, socket_timeout=5
    )


def status():
    db = connect()
    db.ping()
    runs = int(db.get("migration_runs") or 0)
    if runs == 0:
        raise RuntimeError("the migration has not run")
    return {
        "status": "ok",
        "database": "ok",
        "database_user": USER or "default",
        "schema_version": int(db.get("schema_version")),
        "migration_runs": runs,
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/api/records":
            records = [r.decode() for r in connect().lrange("records", 0, -1)]
            self.reply(200, "text/plain", "".join(r + "\n" for r in records).encode())
            return
        if self.path != "/api/status":
            self.send_error(404)
            return
        try:
            code, body = 200, status()
        except Exception as e:  # the status page reports any failure instead of crashing
            code, body = 503, {"status": "error", "error": str(e)}
        self.reply(code, "application/json", json.dumps(body).encode())

    def do_POST(self):
        if self.path != "/api/records":
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= 4096:
            self.send_error(400, "a record is 1 to 4096 bytes")
            return
        record = self.rfile.read(length).decode(errors="replace").strip()
        count = connect().rpush("records", record)
        self.reply(201, "text/plain", f"{count}\n".encode())

    def reply(self, code, content_type, data):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
