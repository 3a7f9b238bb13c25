"""aray's object store: serialization with out-of-band buffers and shared-memory objects.

This package knows nothing of nodes or of the public API; the node agent and the core use it.
"""
