"""
The fault suite (issue 10): probes of the running mesh, each bounded in time and on loopback
(killed processes under traffic, slow clients, bad configuration), one module per fault.
"""
