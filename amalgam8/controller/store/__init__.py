"""
Rule stores: implementations of L{amalgam8.interfaces.IRuleStore}.
"""

from amalgam8.controller.store.file import FileStore
from amalgam8.controller.store.memory import MemoryStore

__all__ = ["MemoryStore", "FileStore"]
