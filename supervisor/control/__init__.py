"""How a person reaches a running supervisor: the control socket (server and
client, SO_PEERCRED) and the optional desktop notification.  Imports:
`events`, `paths`, `integrity` (TOTP) and `kernel`; never the run path or the
command line.
"""
