"""gchat: a real-time chat server for Moodle sites.

Architecture and rules: DESIGN.md; wire contract: docs/protocol.md.
"""

__version__ = "0.1.0"
