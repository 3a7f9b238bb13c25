"""aray's node agent: worker pool, local scheduler, log forwarding.

Imports as ``aray.node``. It knows the wire protocol and the store, never the public API.
"""
