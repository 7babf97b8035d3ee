"""The `agentsup` command line: `main` builds the parser, and each command
group (`run`, `control`, `policy`, `audit`, `totp`, `daemon`, `demo`) is one
module exposing `register(subparsers)`.  The top layer: it may import
anything in the package.
"""
