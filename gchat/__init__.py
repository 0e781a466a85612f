"""gchat: a real-time chat server for Moodle sites.

Architecture and rules: docs/design.md; wire contract: docs/protocol.md.
"""

__version__ = "0.1.0"
