"""
The multi-tenant controller (SPEC A3, B1, B2, B5): rules, revisions, proxy status, traces.
"""
