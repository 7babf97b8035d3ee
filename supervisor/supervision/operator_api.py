"""What a person can do to supervised agents through the control socket.

`OperatorAPI` implements `control.SupervisorAPI` over the supervisor's
judges: list agents and pending actions, resume (the TOTP code is checked
by the control server before this is called), deny, stop and kill.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Mapping

from ..control.channel import ControlError
from .judge import AgentState, AuditSink, Judge, KillReport
from .stopping import STOPPED_STATES


class OperatorAPI:
    def __init__(
        self,
        judges: Callable[[], Mapping[str, Judge]],
        audit: AuditSink,
        describe: Callable[[list[dict[str, object]]], list[dict[str, object]]] = lambda x: x,
    ) -> None:
        self._sessions = judges
        self._audit = audit
        self._describe = describe

    def _session(self, agent_id: str) -> Judge:
        judge = self._sessions().get(agent_id)
        if judge is None or judge.state is AgentState.EXITED:
            raise ControlError(f"no agent '{agent_id}' here (see agentsup ps)")
        return judge

    def agents(self) -> list[dict[str, object]]:
        """judge.info() of each agent, and the pids of its tree (for `ps`'s resource view)."""
        found = []
        for judge in self._sessions().values():
            info = judge.info()
            if judge.state is not AgentState.EXITED and judge.tree is not None:
                # A tree that is going away shows no usage in ps.
                with contextlib.suppress(OSError):
                    info["pids"] = sorted(judge.tree.pids())
            found.append(info)
        return self._describe(found)

    def pending(self) -> list[dict[str, object]]:
        found: list[dict[str, object]] = []
        for judge in self._sessions().values():
            found.extend(judge.pending_info())
        return found

    def resume(self, agent_id: str, *, uid: int, reason: str) -> str:
        judge = self._session(agent_id)
        if judge.pending:
            held = [p for p in judge.pending.values() if p.kind == "approval"]
            judge.settle(True, uid=uid, reason=reason, outcome="approved")
            goes_on = _goes_on(judge, agent_id)
            if not held:
                return f"{goes_on}; the denied action stays denied"
            if len(held) == 1:
                return f"approved: {goes_on}, and the held action proceeds once"
            # Every held action is answered at once (red team 36: say which).
            actions = "; ".join(f"{p.event.action} {p.event.target}" for p in held)
            return f"approved {len(held)} held actions, each once ({actions}): {goes_on}"
        if judge.state is AgentState.STOPPED_TAMPER:
            raise ControlError(
                f"agent '{agent_id}' stays stopped until the policy directory is re-sealed "
                "(agentsup policy verify; agentsup policy seal --code <TOTP>)"
            )
        if judge.state is AgentState.STOPPED_AUDIT:
            raise ControlError(
                f"agent '{agent_id}' stays stopped until the audit log can be written again "
                "(it continues by itself then)"
            )
        if judge.state is AgentState.STOPPED_OPERATOR:
            judge.state = AgentState.RUNNING
            judge.signal_tree(signal.SIGCONT, f"resumed by uid {uid}: {reason}", uid=uid)
            return f"agent '{agent_id}' continues"
        raise ControlError(f"agent '{agent_id}' is {judge.state}; there is nothing to resume")

    def deny(self, agent_id: str, *, uid: int, reason: str) -> str:
        judge = self._session(agent_id)
        if not judge.pending:
            raise ControlError(f"agent '{agent_id}' has nothing pending (see agentsup pending)")
        if any(pending.kind == "violation" for pending in judge.pending.values()):
            # Its action is refused already; what is left to decide is whether it
            # goes on, and that takes a code (red team 36: deny continued it).
            raise ControlError(
                f"agent '{agent_id}' was stopped for a violation, not held for approval: "
                f"continue it with agentsup resume {agent_id} --code <TOTP> (the action "
                f"stays denied), or end it with agentsup kill {agent_id}"
            )
        judge.settle(False, uid=uid, reason=reason, outcome="denied")
        return (
            "denied: the held action fails with a permission error (EACCES or EPERM, "
            f"PermissionError in Python), and {_goes_on(judge, agent_id)}"
        )

    def stop(self, agent_id: str, *, uid: int, reason: str) -> str:
        judge = self._session(agent_id)
        if judge.state in STOPPED_STATES:
            raise ControlError(f"agent '{agent_id}' is already {judge.state}")
        judge.state = AgentState.STOPPED_OPERATOR
        judge.signal_tree(signal.SIGSTOP, f"stopped by uid {uid}: {reason}", uid=uid)
        return f"agent '{agent_id}' stopped"

    def kill(self, agent_id: str, *, uid: int, reason: str) -> str:
        judge = self._session(agent_id)
        if judge.kill_report is None:
            judge.kill_report = KillReport("operator", "kill", f"uid {uid}", reason)
            why = f": {reason}" if reason else ""
            judge.say(f"killed agent '{agent_id}' at the request of uid {uid}{why}")
        judge.signal_tree(signal.SIGKILL, f"killed by uid {uid}: {reason}", uid=uid)
        return f"agent '{agent_id}' killed"

    def audit(self, record: Mapping[str, object]) -> None:
        self._audit.append(record)


def _goes_on(judge: Judge, agent_id: str) -> str:
    """Whether an answered agent continues, or what keeps it stopped (its policy
    directory, its audit log: Judge.settle)."""
    if judge.state is AgentState.STOPPED_TAMPER:
        return (
            f"agent '{agent_id}' stays stopped until the policy directory is re-sealed "
            "(agentsup policy verify; agentsup policy seal --code <TOTP>)"
        )
    if judge.state is AgentState.STOPPED_AUDIT:
        return f"agent '{agent_id}' stays stopped until the audit log can be written again"
    return f"agent '{agent_id}' continues"
