"""
The multi-tenant service registry (SPEC A2): instances register, heartbeat and are listed.
"""
