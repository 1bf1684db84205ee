"""
A tiny HTTP app for the sidecar's integration tests: C{python echo_app.py PORT NAME} listens
on 127.0.0.1:PORT and answers every GET, POST, PUT and DELETE with
C{{"instance": NAME, "path": PATH}} (PATH with its query string).

On SIGTERM (or SIGINT) it stops accepting connections, finishes the requests in flight and
exits with status 0. Standard library only, so that it runs under any interpreter.
"""

import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn


class _Server(ThreadingMixIn, HTTPServer):
    daemon_threads = False      # server_close() waits for the requests in flight
    block_on_close = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A caller killed mid-request (a SIGKILLed nginx resets its keepalive connections)
        # is no error of the app's: no traceback for it.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        HTTPServer.handle_error(self, request, client_address)


class _Stop(Exception):
    """Raised in the main thread by the signal handler: leave serve_forever."""


def _handler(name):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps({"instance": name, "path": self.path}).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format, *args):
            pass

    return Handler


def main(argv):
    port, name = int(argv[1]), argv[2]
    server = _Server(("127.0.0.1", port), _handler(name))

    def stop(signum, frame):
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("echo app {} listening on 127.0.0.1:{}".format(name, port), flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except _Stop:
        pass
    server.server_close()
    print("echo app {} stopped".format(name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
