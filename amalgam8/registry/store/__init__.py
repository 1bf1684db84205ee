"""
Registry stores: implementations of L{amalgam8.interfaces.IRegistryStore}.
"""

from amalgam8.registry.store.memory import MemoryStore

__all__ = ["MemoryStore"]
