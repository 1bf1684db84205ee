"""
Fakes and contract-test factories shipped with amalgam8, for its own tests and for anyone
writing another implementation of one of its interfaces.
"""
