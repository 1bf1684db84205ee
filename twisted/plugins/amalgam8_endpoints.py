"""The endpoint string C{fd:fileno=K:domain=INET}: L{amalgam8.workers.InheritedSocketParser}."""

from amalgam8.workers import InheritedSocketParser

inherited = InheritedSocketParser()
