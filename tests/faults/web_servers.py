"""
What the fault modules of the servers' HTTP front share: a real C{twistd} registry or
controller on 127.0.0.1 (stopped in cleanup), and a raw TCP client that sends bytes as they
are and reads the answer until the server closes.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Protocol

from tests.helpers import ServerProcess, child_environment, twistd_command

__all__ = ["RawClient", "connect", "start_server", "raw_exchange", "tracebacks"]

LOCAL = "tcp:0:interface=127.0.0.1"


async def start_server(case, program, *options, prefix=()):
    """
    Spawn C{twistd -n <program>} (C{a8registry}, C{a8controller}) listening on 127.0.0.1
    in a fresh directory of C{case}; stop it in cleanup.

    @param prefix: an argv the command runs under (C{prlimit --nofile=128:128}).

    @return: C{(ServerProcess, port)}.
    """
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    protocol = ServerProcess(reactor, program + " listening on ")
    argv = list(prefix) + twistd_command() + ["-n", "--pidfile=", "--logger",
                               "amalgam8.logs.json_observer", program,
                               "--listen", LOCAL] + list(options)
    reactor.spawnProcess(protocol, argv[0], argv, env=child_environment({}), path=directory)
    case.addCleanup(_stop, protocol)
    _, port = await protocol.listening(timeout=20)
    return protocol, port


async def _stop(protocol):
    if protocol.exit is not None:
        return
    try:
        protocol.transport.signalProcess("TERM")
    except ProcessExitedAlready:
        return
    try:
        await protocol.ended(timeout=5)
    except Exception:
        try:
            protocol.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        await protocol.ended(timeout=5)


class RawClient(Protocol):
    """Collects every byte the server sends; C{closed} fires with them when it closes."""

    def __init__(self):
        self.received = b""
        self.closed = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


async def connect(port):
    """A connected L{RawClient} to 127.0.0.1:C{port}."""
    client = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return client


async def raw_exchange(port, data, timeout=10):
    """Send C{data}, then read until the server closes; return what it sent."""
    client = await connect(port)
    client.transport.write(data)
    return await client.closed.addTimeout(timeout, reactor)


def tracebacks(protocol):
    """The server's log lines (stdout and stderr) that carry a traceback."""
    return [line for line in protocol.stdout + protocol.stderr
            if "Traceback" in line or "traceback" in line]
