"""The in-agent audit hook for Python agents. Standard library only."""
