"""One module per CLI command group.  Each exposes `register(subparsers)`."""
