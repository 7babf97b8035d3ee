"""What must stay trustworthy while agents run: the HMAC-chained audit log,
the sealed policy directory and its watcher, TOTP codes, and the durable
state files behind them.  Imports: `events`, `paths`, `policy` and `kernel`;
never the run path, control or the command line.
"""
