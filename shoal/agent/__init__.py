"""The agent: runs on every node, keeps that node's kernel and processes matching its NodeView.

It holds one session with the manager (agent/session.py): a full view after each connect, then
deltas. Each change wakes one reconcile pass (agent/worker.py) that stops what is no longer
wanted, makes the overlay networks match (dataplane), then starts what is new, in that order,
so a network is never removed under a task that still needs it. Task state goes back to the
manager as reports; the latest report per task is sent again after a reconnect.

The agent imports nothing of the manager: it knows the manager only through the session.
"""

from shoal.agent.worker import Agent

__all__ = ["Agent"]
