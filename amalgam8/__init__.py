"""
amalgam8: a service mesh for polyglot microservices, built on Twisted.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
