"""
C{a8ctl}, the Amalgam8 command line (SPEC A7): L{dispatch} runs one command line with its
collaborators injected; L{entry} is the console script.
"""

from amalgam8.cli.main import dispatch, entry, main

__all__ = ["dispatch", "main", "entry"]
