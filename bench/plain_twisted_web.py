"""
The ceiling for a Python HTTP server on this machine: a bare twisted.web L{Site} whose one
leaf L{Resource} answers every method and path with the same small JSON body.

It does what every twisted.web server must do for a request (parse it, read the body,
build a L{twisted.web.server.Request}, write headers and body) and nothing else: no routing,
no JSON, no per-request access log (the registry's L{amalgam8.web.A8Site} logs none either, so
neither side pays for one).

    python bench/plain_twisted_web.py [PORT] [--body-file PATH | --body-size N]

It listens on 127.0.0.1 (PORT 0, the default, picks a free port) and prints
C{listening on PORT} once it accepts connections. bench/registry starts it with the default
body; bench/controller with C{--body-file}, so that it answers exactly the bytes the
controller does (C{--body-size N} pads a JSON object to N bytes instead).
"""

import argparse
import sys

from twisted.internet import endpoints, reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

BODY = b'{"status":"up"}'


class Fixed(Resource):
    """Any method, any path: 200 with C{body} (L{BODY} unless told otherwise)."""

    isLeaf = True

    def __init__(self, body=BODY):
        Resource.__init__(self)
        self.body = body

    def render(self, request):
        request.setHeader(b"content-type", b"application/json")
        return self.body


class QuietSite(Site):
    """No access log line per request."""

    def log(self, request):
        pass


def padded(size):
    """A JSON object of exactly C{size} bytes (at least 10)."""
    return b'{"pad":"' + b"x" * max(size - 10, 0) + b'"}'


def main(argv):
    parser = argparse.ArgumentParser(prog="plain_twisted_web.py")
    parser.add_argument("port", nargs="?", type=int, default=0)
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body-file", help="answer the bytes of this file")
    body.add_argument("--body-size", type=int, help="answer a JSON object of this many bytes")
    options = parser.parse_args(argv[1:])
    if options.body_file:
        with open(options.body_file, "rb") as f:
            content = f.read()
    elif options.body_size is not None:
        content = padded(options.body_size)
    else:
        content = BODY
    endpoint = endpoints.TCP4ServerEndpoint(reactor, options.port, interface="127.0.0.1")
    listening = endpoint.listen(QuietSite(Fixed(content)))

    def announce(listener):
        sys.stdout.write("listening on {}\n".format(listener.getHost().port))
        sys.stdout.flush()

    def failed(failure):
        sys.stderr.write("plain_twisted_web: {}\n".format(failure.getErrorMessage()))
        reactor.stop()

    listening.addCallbacks(announce, failed)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
