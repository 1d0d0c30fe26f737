"""The embedded DNS server: every task asks 127.0.0.11, its node answers from the NodeView.

How it works:

- One resolver per node, a child process of the agent (`python -m shoal.dns`, on uvloop), in the
  node's network namespace. The agent feeds it over a pipe (control.py, process.py): the full
  view after each (re)connect, then every delta as it arrives, and "attach task T in namespace
  N" before T's first process starts, "detach T" before N goes. It dies with the agent and is
  restarted, and given everything again, if it dies alone.
- Attach enters N from a short-lived thread, makes a UDP and a TCP socket bound to
  127.0.0.11:53 there, and comes back (server.py): sockets keep their namespace, so one event
  loop serves every task of the node, and the socket a query came in on says who asked.
- The task's /etc/netns/<N>/resolv.conf says `nameserver 127.0.0.11` and `options ndots:0`
  (resolvconf.py); `ip netns exec` binds it over /etc/resolv.conf for the task's processes.
- Names come only from the view (records.py): per network, `<service>` (its VIP, or its healthy
  task addresses in dnsrr mode), `tasks.<service>`, aliases, task names, `<name>.<network>`,
  SRV from the service's ports, PTR for task addresses and VIPs. An asker sees the merged
  names of the networks it is on and no other (scope.py, tables.py).
- The core (core.py) is a pure function: query bytes and asker in, answer bytes out (or
  "forward this", or "drop"). Cluster answers are kept as ready wire bytes per scope; only the
  header is packed per query. Everything else is forwarded (forward.py) to the task's own
  --dns servers, else the node's upstreams, from the node's namespace; tasks whose networks
  are all --internal get REFUSED instead.

Files: wire (format), records (names of one network), scope (an asker's merged names and its
built answers), tables (the view and its scopes), core (the pure resolver), forward
(upstreams), server (sockets and protocols), control (the agent's commands), process (the
agent's side), resolvconf (resolv.conf files), __main__ (the process). See docs/dns.md.
"""
