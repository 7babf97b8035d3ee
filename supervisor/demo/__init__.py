"""The example agent that `agentsup demo` runs under the strict policy."""
