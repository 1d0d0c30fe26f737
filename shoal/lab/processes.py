"""The lab's processes: the manager in node1's namespace, an agent in every node's namespace,
and the outside world's DNS server (dnsmasq) in ext's.

Each runs detached (its own session, so its own process group), logs to
/var/lib/shoal/<lab>/<proc>.log and has its pid in /run/shoal/<lab>/<proc>.pid, where <proc>
is "manager", the node's name or "dnsmasq". A pid is trusted only if that process's command
line still carries the lab's own path for it (the manager's and agents' state directory,
dnsmasq's hosts file), so a recycled pid is never signalled.

dnsmasq answers on ext's 198.18.0.2:53 (UDP and TCP) from a hosts file of outside names
(OUTSIDE_NAMES, under RFC 2606's .test), as the authority for every name (any other name is
NXDOMAIN, as the real internet would say of a name that does not exist), and forwards
nowhere. Agents get it as their upstream (`--dns-upstream 198.18.0.2`): forwarding is tested
for real and no query can leave the lab.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import shoal
from shoal.errors import ShoalError, Unavailable
from shoal.lab.layout import NETNS_RUN_DIR, Lab, LabNode

STOP_TIMEOUT = 10.0
DNSMASQ = "dnsmasq"  # its <proc> name: pid file, log
OUTSIDE_NAMES = {"outside.test": "198.18.0.2", "www.outside.test": "198.18.0.2",
                 "api.outside.test": "198.18.0.2"}

# Popen objects of the children this process started, so that they are reaped (a zombie
# would otherwise look alive).
_children: dict[int, subprocess.Popen] = {}


def enter(netns: str) -> list[str]:
    """The command prefix that runs a lab process inside network namespace `netns`.

    Not `ip netns exec`: that also gives the process a private mount namespace (slave of the
    machine's), so a namespace the agent makes with `ip netns add` or pyroute2 would be mounted
    in /run/netns for the agent only: invisible to `ip netns` outside, lost when the agent
    restarts, and out of reach of `lab down`. nsenter enters the network namespace alone. The
    price: /sys is the machine's, so lab processes read links over netlink, never /sys/class/net.
    """
    return ["nsenter", f"--net={NETNS_RUN_DIR / netns}", "--"]


def manager_argv(lab: Lab) -> list[str]:
    return [
        *enter(lab.manager_node.netns),
        lab.python, "-m", "shoal", "manager",
        "--state-dir", str(lab.manager_state_dir),
        "--socket", str(lab.docker_socket),
        "--listen", lab.manager_addr,
    ]  # fmt: skip


def agent_argv(lab: Lab, node: LabNode) -> list[str]:
    return [
        *enter(node.netns),
        lab.python, "-m", "shoal", "agent",
        "--manager", lab.manager_addr,
        "--hostname", node.name,
        "--addr", node.addr,
        "--state-dir", str(lab.node_state_dir(node)),
        "--ns-prefix", lab.prefix,
        "--dns-upstream", lab.ext_addr,
        # Only the lab's nodes may join: ext, the outside world, may not reach the manager.
        "--control-from", f"{lab.nodes[0].addr}-{lab.nodes[-1].addr}", "--closed-node",
    ]  # fmt: skip


def hosts_file(lab: Lab) -> Path:
    return lab.run_dir / "ext-hosts"


def dnsmasq_argv(lab: Lab) -> list[str]:
    return [
        *enter(lab.ext_netns),
        DNSMASQ, "--keep-in-foreground", "--log-facility=-",
        "--conf-file=/dev/null",  # none of the machine's dnsmasq configuration
        "--pid-file=",  # not /run/dnsmasq.pid: the lab writes its own pid file
        "--no-resolv", "--no-hosts", "--no-poll", f"--addn-hosts={hosts_file(lab)}",
        "--local=/#/",  # authoritative for every name: unknown ones are NXDOMAIN
        f"--listen-address={lab.ext_addr}", "--bind-interfaces",
        "--cache-size=1000",
    ]  # fmt: skip


def _ownership(lab: Lab, proc: str) -> list[bytes]:
    """Consecutive argv entries that only lab `lab`'s `proc` has."""
    if proc == DNSMASQ:
        return [f"--addn-hosts={hosts_file(lab)}".encode()]
    return [b"--state-dir", str(_state_dir(lab, proc)).encode()]


def _state_dir(lab: Lab, proc: str) -> Path:
    # manager -> <state>/manager, nodeI -> <state>/nodeI: by name alone, so that lab down can
    # check a pid file even when it does not know how many nodes the lab had.
    return lab.state_dir / proc


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The state follows the command name in parentheses, which may hold spaces.
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _owned(lab: Lab, proc: str, pid: int) -> bool:
    """Process `pid` is still lab `lab`'s `proc` (its argv holds --state-dir <its dir>)."""
    # While a process is in execve (nsenter execs python, a script's shebang execs
    # again) its cmdline reads empty for a moment: look again before judging.
    for _ in range(50):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if cmdline:
            break
        time.sleep(0.01)
    argv = cmdline.split(b"\0")
    want = _ownership(lab, proc)
    return any(argv[i:i + len(want)] == want for i in range(len(argv)))


def pid_of(lab: Lab, proc: str) -> int | None:
    """The pid of the lab's running `proc` ("manager" or a node name), or None."""
    try:
        pid = int(lab.pid_file(proc).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) and _owned(lab, proc, pid) else None


def _start(lab: Lab, proc: str, argv: list[str]) -> int:
    pid = pid_of(lab, proc)
    if pid is not None:
        return pid
    lab.run_dir.mkdir(parents=True, exist_ok=True)
    _state_dir(lab, proc).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The child imports the same shoal as this process, installed or not.
    src = str(Path(shoal.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    with open(lab.log_file(proc), "ab") as log:
        log.write(f"--- {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
        log.flush()
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd="/",
        )
    _children[child.pid] = child
    tmp = lab.pid_file(proc).with_suffix(".tmp")
    tmp.write_text(f"{child.pid}\n")
    tmp.replace(lab.pid_file(proc))
    return child.pid


def _signal(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (start_new_session made it leader), or the
    process alone if it is not a leader."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop(lab: Lab, procs: Iterable[str], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the processes together, wait up to `timeout` seconds, then SIGKILL their
    process groups. Also clears their pid files."""
    procs = list(procs)
    pids = {proc: pid for proc in procs if (pid := pid_of(lab, proc)) is not None}
    for pid in pids.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids.values():
        # Also reaches children the leader left behind in its group.
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in procs:
        lab.pid_file(proc).unlink(missing_ok=True)


def start_dnsmasq(lab: Lab) -> int:
    """Start the outside world's DNS server in ext unless it runs; returns its pid."""
    if shutil.which(DNSMASQ) is None:
        raise Unavailable("missing tool: dnsmasq (install with: apt-get install -y "
                          "dnsmasq-base; or run `make setup`)")
    lab.run_dir.mkdir(parents=True, exist_ok=True)
    hosts = hosts_file(lab)
    tmp = hosts.with_suffix(".tmp")
    tmp.write_text("".join(f"{ip} {name}\n" for name, ip in OUTSIDE_NAMES.items()))
    tmp.replace(hosts)
    return _start(lab, DNSMASQ, dnsmasq_argv(lab))


def stop_dnsmasq(lab: Lab, timeout: float = STOP_TIMEOUT) -> None:
    stop(lab, [DNSMASQ], timeout)


def _run_once(lab: Lab, netns: str, argv: list[str], what: str,
              env: dict[str, str] | None = None) -> str:
    """Run a one-shot shoal command in a lab namespace; its output, or ShoalError with it."""
    src = str(Path(shoal.__file__).resolve().parent.parent)
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (src, full_env.get("PYTHONPATH")) if p)
    proc = subprocess.run([*enter(netns), lab.python, "-m", "shoal", *argv], env=full_env,
                          capture_output=True, text=True, timeout=60, cwd="/")
    if proc.returncode != 0:
        raise ShoalError(f"lab {lab.name}: {what} failed: "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def init_cluster(lab: Lab, cert_expiry: str | None = None) -> None:
    """`shoal init` in node1's namespace (idempotent): the CA, the tokens, the manager's
    identity, which the agent of node1 shares."""
    argv = ["init", "--state-dir", str(lab.manager_state_dir),
            "--advertise-addr", lab.manager_addr, "--hostname", lab.manager_node.name,
            "--agent-state-dir", str(lab.node_state_dir(lab.manager_node))]
    if cert_expiry:
        argv += ["--cert-expiry", cert_expiry]
    _run_once(lab, lab.manager_node.netns, argv, "shoal init")


def joined(lab: Lab, node: LabNode | str | int) -> bool:
    return (lab.node_state_dir(node) / "tls" / "node.pem").exists()


def join_node(lab: Lab, node: LabNode | str | int, token: str) -> None:
    """`shoal join` from the node's namespace, the token in a 0600 file (never in argv)."""
    n = lab.node(node)
    token_file = lab.run_dir / f"{n.name}.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    try:
        _run_once(lab, n.netns, ["join", lab.manager_addr, "--token-file", str(token_file),
                                 "--state-dir", str(lab.node_state_dir(n))], f"{n.name} join")
    finally:
        token_file.unlink(missing_ok=True)


def start_manager(lab: Lab) -> int:
    """Start the manager in node1's namespace unless it runs; returns its pid."""
    return _start(lab, "manager", manager_argv(lab))


def stop_manager(lab: Lab, timeout: float = STOP_TIMEOUT) -> None:
    stop(lab, ["manager"], timeout)


def start_agent(lab: Lab, node: LabNode | str | int) -> int:
    """Start the agent of `node` in its namespace unless it runs; returns its pid."""
    n = lab.node(node)
    return _start(lab, n.name, agent_argv(lab, n))


def stop_agent(lab: Lab, node: LabNode | str | int, timeout: float = STOP_TIMEOUT) -> None:
    stop(lab, [lab.node(node).name], timeout)


def log_tail(lab: Lab, proc: str, lines: int = 20) -> str:
    try:
        text = lab.log_file(proc).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
