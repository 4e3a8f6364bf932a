"""The local web server under explore.py, on the standard library's http.server.

Why not a framework: the page needs a handful of JSON endpoints, a few static files and one
upload, all on one machine. http.server does that with nothing to install or vendor, and keeps
every rule of what may be served in the few lines below, where a reader can check them:

- it serves its own page's files, the run's figures named in a fixed list, and /api/ answers;
  any other path, one with `..` in it included, gets 404;
- an upload larger than MAX_UPLOAD_BYTES is refused before it is read;
- on 127.0.0.1 it answers only requests addressed to 127.0.0.1 or localhost (its Host header):
  a web page elsewhere cannot reach it through a DNS name made to point at this machine;
- a request that fails gets a JSON {"error": message}: the message of an ExplainedError (400),
  or a one-line summary of anything else (500). The page shows it; no traceback reaches it, and
  the server goes on answering.
"""

import http.server
import json
import os
import sys
import urllib.parse

from plumbing.errors import ExplainedError

MAX_UPLOAD_BYTES = 20 * 2**20  # an uploaded image: far above any photo this model would take
# An upload over the limit is read and dropped up to this size, so that the browser, still
# sending, gets the message instead of a reset connection; beyond it the connection is closed.
MAX_DISCARDED_BYTES = 256 * 2**20
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".gif": "image/gif"}


class NotFound(Exception):
    """The path names nothing this server serves."""


class UploadTooLarge(ExplainedError):
    """An upload over MAX_UPLOAD_BYTES."""


class NotAllowed(Exception):
    """A request addressed to another host name than this server's own (DNS rebinding)."""


def serve(app, page_folder, page_files, run_dir, run_files, host, port, on_ready):
    """Answer requests until Ctrl-C: "/" and /page/NAME from page_folder (NAME in page_files),
    /run/NAME from run_dir (NAME in run_files), /api/NAME from app.get(NAME, query) and
    app.post(NAME, query, body). on_ready(address) is called once the socket listens."""
    statics = {"/": os.path.join(page_folder, "index.html")}
    statics.update({f"/page/{name}": os.path.join(page_folder, name) for name in page_files})
    statics.update({f"/run/{name}": os.path.join(run_dir, name) for name in run_files})
    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.app, server.statics, server.daemon_threads = app, statics, True
    port = server.server_address[1]
    server.hosts = ({f"127.0.0.1:{port}", f"localhost:{port}"} if host in ("127.0.0.1", "localhost")
                    else None)  # another --host: any name, as the warning said
    on_ready(f"http://{host}:{server.server_address[1]}/")
    try:
        server.serve_forever()
    finally:
        server.server_close()


class Handler(http.server.BaseHTTPRequestHandler):
    """One request: self.server.app answers /api/, self.server.statics lists the files."""

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        self._answer(lambda path, query: self._get(path, query))

    def do_POST(self):  # noqa: N802
        self._answer(lambda path, query: self._post(path, query))

    def _get(self, path, query):
        if path.startswith("/api/"):
            return self._json(200, self.server.app.get(path[len("/api/"):], query))
        statics = self.server.statics
        if path not in statics or not os.path.isfile(statics[path]):
            raise NotFound(path)
        with open(statics[path], "rb") as f:
            body = f.read()
        content_type = CONTENT_TYPES.get(os.path.splitext(path)[1] or ".html",
                                         "application/octet-stream")
        return self._send(200, body, content_type)

    def _post(self, path, query):
        if not path.startswith("/api/"):
            raise NotFound(path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            assert length >= 0
        except (ValueError, AssertionError):
            self.close_connection = True
            raise ExplainedError("The request's Content-Length is not a size in bytes.") from None
        if length > MAX_UPLOAD_BYTES:
            self._discard(length)
            raise UploadTooLarge(
                f"The file is {length / 2**20:.1f} MB; uploads are limited to "
                f"{MAX_UPLOAD_BYTES // 2**20} MB. Give a smaller image.")
        body = self.rfile.read(length)
        return self._json(200, self.server.app.post(path[len("/api/"):], query, body))

    def _discard(self, length):
        self.close_connection = True  # whatever is left unread is not another request
        if length <= MAX_DISCARDED_BYTES:
            while length > 0:
                chunk = self.rfile.read(min(length, 2**20))
                if not chunk:
                    break  # the client stopped sending
                length -= len(chunk)

    def _answer(self, respond):
        parts = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parts.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        try:
            hosts = self.server.hosts
            if hosts is not None and self.headers.get("Host") not in hosts:
                raise NotAllowed()
            if ".." in path.split("/"):
                raise NotFound(path)
            respond(path, query)
        except NotAllowed:
            self._json(403, {"error": "This server answers only requests to 127.0.0.1."})
        except NotFound:
            self._json(404, {"error": f"Nothing is served at {parts.path}."})
        except ExplainedError as error:
            self._json(413 if isinstance(error, UploadTooLarge) else 400,
                       {"error": str(error)})
        except Exception as error:  # the page gets one line; the server goes on
            print(f"warning: {self.command} {parts.path} failed: "
                  f"{type(error).__name__}: {error}", file=sys.stderr)
            self._json(500, {"error": f"The server could not answer ({type(error).__name__}: "
                                      f"{str(error)[:200]})."})

    def _json(self, status, data):
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status, body, content_type):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away: nobody is left to answer
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request, an unknown method), in JSON too."""
        self.close_connection = True
        self._json(code, {"error": message or f"The request was refused ({code})."})

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        pass  # one line per request would bury the address and the warnings
