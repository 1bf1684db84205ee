# -*- test-case-name: tests.test_examples -*-
"""
helloworld: the smallest app of the mesh. Two versions of it behind one sidecar each are
enough to show version routing: every answer says which version and which instance gave it.

    python examples/helloworld/helloworld.py --port 9080 --version v1

C{GET /hello} answers C{{"service": "helloworld", "version": ..., "instance": ...}} (or one
line of text with C{?format=text} or C{Accept: text/plain}), C{GET /health} answers 200.

Settings (the option wins over the environment):

    --port      PORT       TCP port; 0 picks a free one [9080]
    --host                 address to listen on [127.0.0.1]
    --version   VERSION    the version it reports [v1]
    --instance  INSTANCE   the instance it reports [the address it listens on, host:port]

It needs only Twisted and Klein, like any app in the mesh it uses no Amalgam8 library.
"""

import json
import os
import socket
import sys

from klein import Klein
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site

__all__ = ["HelloWorld", "Options", "main"]

SERVICE = "helloworld"
DEFAULT_PORT = 9080


class HelloWorld:
    """
    The helloworld HTTP API.

    @ivar version: the version this instance reports (C{v1}, C{v2}, ...).
    @ivar instance: the instance this instance reports (C{host:port} by default).
    """

    app = Klein()

    def __init__(self, version, instance):
        self.version = version
        self.instance = instance

    @app.route("/hello", methods=["GET"])
    def hello(self, request):
        """
        Who answered: JSON, or one line of text when the client asks for C{text/plain}
        (C{?format=text}, or an C{Accept} header naming C{text/plain} but not JSON).
        """
        if _wants_text(request):
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return "Hello version: {}, instance: {}\n".format(
                self.version, self.instance).encode("utf-8")
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"service": SERVICE, "version": self.version,
                           "instance": self.instance}).encode("utf-8")

    @app.route("/health", methods=["GET"])
    def health(self, request):
        """Always healthy while it answers."""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"helloworld is healthy\n"


def _wants_text(request):
    if request.args.get(b"format") == [b"text"]:
        return True
    accept = (request.getHeader(b"accept") or b"").lower()
    return b"text/plain" in accept and b"json" not in accept


class Options(usage.Options):
    """
    The command line; each setting falls back on its environment variable, then on its
    default (see the module docstring).
    """

    synopsis = "helloworld.py [--port PORT] [--host HOST] [--version V] [--instance I]"
    longdesc = "GET /hello answers which version and instance it is; GET /health answers 200."
    optParameters = [
        ["port", "p", None, "TCP port, 0 for any free one [env PORT, default 9080]."],
        ["host", None, "127.0.0.1", "Address to listen on."],
        ["instance", None, None, "The instance reported [env INSTANCE, default host:port]."],
    ]

    def __init__(self, environ):
        usage.Options.__init__(self)
        self._environ = environ
        self["version"] = None

    def opt_version(self, version):
        """The version reported [env VERSION, default v1]."""
        self["version"] = version

    def postOptions(self):
        environ = self._environ
        self["port"] = _port(self["port"] or environ.get("PORT") or str(DEFAULT_PORT))
        self["version"] = self["version"] or environ.get("VERSION") or "v1"
        self["instance"] = self["instance"] or environ.get("INSTANCE") or None
        if not self["host"]:
            raise usage.UsageError("--host must not be empty")


def _port(text):
    try:
        port = int(text)
    except ValueError:
        raise usage.UsageError("the port must be a number, not {!r}".format(text))
    if not 0 <= port <= 65535:
        raise usage.UsageError("the port must be in 0..65535, not {}".format(port))
    return port


def _endpoint(host, port):
    """The endpoint string that listens on C{host}:C{port} (IPv6 colons escaped)."""
    return "tcp:{}:interface={}".format(port, host.replace(":", "\\:"))


def _hostport(host, port):
    return "[{}]:{}".format(host, port) if ":" in host else "{}:{}".format(host, port)


async def main(reactor, argv, stdout=None, stderr=None, environ=None):
    """
    Listen until the reactor stops (SIGTERM or SIGINT under L{react}).

    Writes one line, C{helloworld VERSION listening on HOST:PORT}, to C{stdout} once
    listening, and C{helloworld VERSION stopping} when the reactor shuts down.

    @param reactor: the reactor to listen on (C{IReactorTCP}, C{IReactorCore}).
    @param argv: the command-line arguments, without the program name.
    @raise SystemExit: with code 2 on a bad command line (the usage goes to C{stderr}).
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    options = Options(os.environ if environ is None else environ)
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        stderr.write("usage: {}\n{}: {}\n".format(options.synopsis, SERVICE, e))
        stderr.flush()
        raise SystemExit(2)

    # The default instance names the port really bound (--port 0), so the app is built
    # once listening; no request can come in before, as listen() has fired already.
    site = Site(Resource())
    endpoint = serverFromString(reactor, _endpoint(options["host"], options["port"]))
    port = await endpoint.listen(site)
    address = port.getHost()
    instance = options["instance"]
    if instance is None:
        host = address.host
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        instance = _hostport(host, address.port)
    site.resource = HelloWorld(options["version"], instance).app.resource()

    stdout.write("{} {} listening on {}\n".format(
        SERVICE, options["version"], _hostport(address.host, address.port)))
    stdout.flush()

    stopped = Deferred()

    def shutdown():
        stdout.write("{} {} stopping\n".format(SERVICE, options["version"]))
        stdout.flush()
        d = maybeDeferred(port.stopListening)
        d.addBoth(lambda _: stopped.callback(None))
        return d

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    await stopped


def _log_to_stderr():
    """The access log, as text on stderr."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                     redirectStandardIO=False)


if __name__ == "__main__":
    from twisted.internet.task import react

    _log_to_stderr()
    react(main, (sys.argv[1:],))
