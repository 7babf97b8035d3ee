"""The only code that speaks raw syscalls, ioctls and ctypes.

seccomp (the filter and the listener ioctls), Landlock, /proc of another
process, and cgroups.  Each module wraps one kernel interface in small typed
functions.  Imports: the standard library, `events`, `paths` and the pure
`policy` values (a Landlock plan); never the run path, integrity, control or
the command line.
"""
