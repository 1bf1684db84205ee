"""
The sidecar: registration, health checks, route management, supervision of the proxy and
the app.
"""
