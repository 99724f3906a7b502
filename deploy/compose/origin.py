"""A tiny demo origin for deploy/docker-compose.yml: a few HTML pages with Cache-Control.

Every page takes 100 ms, like a slow app view, so a cache hit is easy to tell from a miss.
A POST, PUT, PATCH or DELETE under /courses/ changes the course list, and cachegate purges
the "courses" tag when it sees that write succeed.

    python3 origin.py            # listens on 0.0.0.0:8000 ($ORIGIN_LISTEN overrides)
"""

import html
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VIEW_DELAY = 0.1
COURSES = {"1": "Databases", "2": "Networks", "3": "Compilers"}
version = 1
version_lock = threading.Lock()


def page(title, body):
    served = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        '<link rel="stylesheet" href="/static/style.css"></head>'
        f"<body><h1>{html.escape(title)}</h1>{body}"
        f"<p><small>served by the origin at {served}</small></p></body></html>"
    )


class Handler(BaseHTTPRequestHandler):
    server_version = "demo-origin"

    def answer(self, status, content_type, cache_control, text):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if cache_control:
            self.send_header("Cache-Control", cache_control)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        role = self.headers.get("X-User-Role", "anonymous")
        if path == "/static/style.css":
            css = "body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }\n"
            return self.answer(200, "text/css", "public, max-age=3600", css)
        time.sleep(VIEW_DELAY)
        if path == "/":
            links = "".join(
                f'<li><a href="{p}">{p}</a></li>'
                for p in ("/courses/", "/courses/1/", "/private/")
            )
            body = f"<p>Pages of the cachegate demo:</p><ul>{links}</ul>"
            return self.answer(200, "text/html; charset=utf-8", "public, max-age=60", page("Demo", body))
        if path == "/courses/":
            items = "".join(
                f'<li><a href="/courses/{i}/">{html.escape(n)}</a></li>' for i, n in COURSES.items()
            )
            body = f"<p>List version {version}, seen as {html.escape(role)}.</p><ul>{items}</ul>"
            return self.answer(200, "text/html; charset=utf-8", "max-age=600", page("Courses", body))
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "courses" and parts[1] in COURSES:
            body = f"<p>Course {parts[1]}, list version {version}.</p>"
            return self.answer(200, "text/html; charset=utf-8", "max-age=600", page(COURSES[parts[1]], body))
        if path == "/private/":
            body = f"<p>Only for you ({html.escape(role)}): never stored by a shared cache.</p>"
            return self.answer(200, "text/html; charset=utf-8", "private", page("Private", body))
        return self.answer(404, "text/plain; charset=utf-8", "public, max-age=60", "not found\n")

    def do_HEAD(self):
        self.do_GET()

    def write(self):
        global version
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        time.sleep(VIEW_DELAY)
        if not self.path.startswith("/courses/"):
            return self.answer(404, "text/plain; charset=utf-8", None, "not found\n")
        with version_lock:
            version += 1
            now = version
        return self.answer(200, "application/json", None, f'{{"ok": true, "version": {now}}}\n')

    do_POST = do_PUT = do_PATCH = do_DELETE = write


if __name__ == "__main__":
    host, _, port = os.environ.get("ORIGIN_LISTEN", "0.0.0.0:8000").rpartition(":")
    # As PID 1 in a container, SIGTERM does nothing unless handled.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"demo origin listening on http://{host}:{port}", flush=True)
    server.serve_forever()
