"""The run path: from `agentsup run` (or the daemon) to an agent's last syscall.

`supervisor.Supervisor` owns the one event loop (`loop`) and every agent in it.
`agent.Agent` sets one agent up (`launch` forks the `trampoline`), wires its
seccomp listener and hook channel (`hookserver`) into the loop and ends it.
`mediator` turns a trapped syscall into an `Event` and carries out the
answer; `judge` turns the policy's `Decision` into a response, an audit
record and signals.  `placement`, `watchdog`, `operator_api`, `foreground`
and `daemon` are the rest of the running machinery.  Imports: anything but
the command line.
"""
