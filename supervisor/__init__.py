"""agentsup: an OS-level supervisor for AI agents on Linux."""

__version__ = "0.1.0"
