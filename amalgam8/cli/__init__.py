"""
C{a8ctl}, the Amalgam8 command line (SPEC A7): L{dispatch} runs one command line with its
collaborators injected; L{entry} is the console script (both in L{amalgam8.cli.main}).

They are imported on first use: Gremlin's recipe module uses a8ctl's selector syntax
(C{amalgam8.cli.selectors}), and a8ctl's recipe-run uses Gremlin, so importing the command
line here at once would make the two import each other half-made.
"""

import importlib

__all__ = ["dispatch", "entry"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module("amalgam8.cli.main"), name)
    raise AttributeError("module 'amalgam8.cli' has no attribute {!r}".format(name))
