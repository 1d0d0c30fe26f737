"""The real docker CLI and the docker SDK against a lab's manager, agreeing with shoal's view."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from shoal.client import Client
from tests.integration.test_cluster import running, wait_for

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI installed")


def docker(env, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({out.returncode}): "
                             f"{out.stdout}{out.stderr}")
    return out


def test_docker_cli_drives_the_cluster(lab, docker_env):
    client = Client(lab.docker_host)
    out = docker(docker_env, "version")
    assert "API version:       1.47" in out.stdout
    out = docker(docker_env, "info")
    assert "Swarm: active" in out.stdout and "Nodes: 3" in out.stdout
    out = docker(docker_env, "node", "ls")
    assert out.stdout.count("Ready") == 3 and "Leader" in out.stdout and "*" in out.stdout

    docker(docker_env, "network", "create", "-d", "overlay", "appnet2")
    assert "appnet2" in docker(docker_env, "network", "ls").stdout
    net = json.loads(docker(docker_env, "network", "inspect", "appnet2").stdout)[0]
    assert net["Driver"] == "overlay" and net["IPAM"]["Config"][0]["Subnet"].startswith("10.")
    try:
        out = docker(docker_env, "service", "create", "-d", "--name", "api", "--replicas", "3",
                     "--network", "appnet2", "python:3", "python3", "-m", "http.server", "8000")
        service_id = out.stdout.strip()
        assert len(service_id) == 25
        tasks = wait_for("3 running", lambda: running(client, "api", 3))

        out = docker(docker_env, "service", "ls")
        assert "api" in out.stdout and "3/3" in out.stdout and "python:3" in out.stdout
        out = docker(docker_env, "service", "ps", "api")
        assert out.stdout.count("Running") >= 6  # desired and current, per task
        for node in ("node1", "node2", "node3"):
            assert node in out.stdout
        inspect = json.loads(docker(docker_env, "service", "inspect", "api").stdout)[0]
        assert inspect["ID"] == service_id
        assert inspect["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == [
            "python3", "-m", "http.server", "8000"]

        task = json.loads(docker(docker_env, "inspect", "--type", "task", tasks[0]["ID"]).stdout)[0]
        att = task["NetworksAttachments"][0]
        assert att["Network"]["Spec"]["Name"] == "appnet2"
        assert att["Addresses"][0].startswith(net["IPAM"]["Config"][0]["Subnet"].rsplit(".", 1)[0])

        docker(docker_env, "service", "scale", "-d", "api=5")
        wait_for("5 running", lambda: running(client, "api", 5))
        docker(docker_env, "service", "update", "-d", "--replicas", "1", "api")
        wait_for("1 running", lambda: running(client, "api", 1))
        # shoal's CLI sees the same thing.
        shoal_ls = subprocess.run([sys.executable, "-m", "shoal", "--host", lab.docker_host,
                                   "service", "ls", "--format", "json"], capture_output=True,
                                  text=True, check=True).stdout
        [svc] = [s for s in json.loads(shoal_ls) if s["Spec"]["Name"] == "api"]
        assert svc["ServiceStatus"]["RunningTasks"] == 1
        docker(docker_env, "service", "rm", "api")
        wait_for("tasks gone", lambda: not client.get("/tasks"))
        out = docker(docker_env, "service", "inspect", "api", check=False)
        assert out.returncode == 1 and "no such service" in out.stderr.lower()
    finally:
        docker(docker_env, "service", "rm", "api", check=False)
        wait_for("tasks gone", lambda: not client.get("/tasks"))
        docker(docker_env, "network", "rm", "appnet2", check=False)
    assert "appnet2" not in docker(docker_env, "network", "ls").stdout


def test_docker_cli_bad_input_gets_the_servers_message(lab, docker_env):
    docker(docker_env, "network", "create", "-d", "overlay", "--subnet", "10.77.0.0/24", "one")
    try:
        out = docker(docker_env, "network", "create", "-d", "overlay", "--subnet",
                     "10.77.0.0/16", "two", check=False)
        assert out.returncode == 1 and "overlaps" in out.stderr
        out = docker(docker_env, "network", "create", "-d", "overlay", "one", check=False)
        assert out.returncode == 1 and "already exists" in out.stderr
        out = docker(docker_env, "service", "create", "-d", "--name", "x", "--network", "nosuch",
                     "python:3", "true", check=False)
        assert out.returncode == 1 and "nosuch" in out.stderr
    finally:
        docker(docker_env, "network", "rm", "one", check=False)
        docker(docker_env, "network", "rm", "two", check=False)


def test_docker_sdk_lists_and_creates(lab, docker_env, monkeypatch):
    docker_sdk = pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", lab.docker_host)
    sdk = docker_sdk.from_env()
    net = sdk.networks.create("pynet", driver="overlay")
    try:
        assert "pynet" in [n.name for n in sdk.networks.list()]
        svc = sdk.services.create("python:3", ["python3", "-m", "http.server", "80"],
                                  name="pysvc", networks=["pynet"])
        assert [s.name for s in sdk.services.list()] == ["pysvc"]
        client = Client(lab.docker_host)
        wait_for("1 running", lambda: running(client, "pysvc", 1))
        svc.scale(2)
        wait_for("2 running", lambda: running(client, "pysvc", 2))
        assert len([t for t in svc.tasks() if t["DesiredState"] == "running"]) == 2
        svc.remove()
        wait_for("tasks gone", lambda: not client.get("/tasks"))
    finally:
        for s in sdk.services.list():
            s.remove()
        wait_for("tasks gone", lambda: not Client(lab.docker_host).get("/tasks"))
        net.remove()


def test_docker_service_logs_follows(lab, docker_env):
    client = Client(lab.docker_host)
    docker(docker_env, "service", "create", "-d", "--name", "tick", "python:3", "sh", "-c",
           "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done")
    try:
        wait_for("tick running", lambda: running(client, "tick", 1))
        out = subprocess.run(["timeout", "2.5", "docker", "service", "logs", "-f", "tick"],
                             env=docker_env, capture_output=True, text=True, timeout=30)
        ticks = [int(line.split()[-1]) for line in out.stdout.splitlines() if "| tick" in line]
        # Lines written while following arrive too, in order, each once.
        assert len(ticks) >= 8 and ticks == list(range(ticks[0], ticks[0] + len(ticks)))
        assert all(line.startswith("tick.1.") and "@node" in line
                   for line in out.stdout.splitlines())
    finally:
        docker(docker_env, "service", "rm", "tick", check=False)
        wait_for("tasks gone", lambda: not client.get("/tasks"))


def test_docker_update_config_delay_failure_rollback(lab, docker_env):
    """`docker service update` paced by --update-delay, a failing update rolled back by
    --update-failure-action rollback, and `docker service rollback`."""
    client = Client(lab.docker_host)
    docker(docker_env, "service", "create", "-d", "--name", "upd", "--replicas", "2",
           "local", "sleep", "1000")
    try:
        wait_for("upd running", lambda: running(client, "upd", 2))
        start = time.monotonic()
        docker(docker_env, "service", "update", "--update-delay", "2s", "--update-monitor",
               "1s", "--args", "sleep 1001", "upd")
        assert time.monotonic() - start >= 2  # the second slot waited out the delay
        wait_for("the update completed", lambda: client.find("service", "upd")[
            "UpdateStatus"]["State"] == "completed", timeout=10)

        docker(docker_env, "service", "update", "--update-failure-action", "rollback",
               "--update-monitor", "2s", "--args", "false", "upd", check=False)
        wait_for("the rollback", lambda: client.find("service", "upd")["UpdateStatus"][
            "State"] == "rollback_completed", timeout=30)
        svc = client.find("service", "upd")
        assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == ["sleep", "1001"]
        tasks = wait_for("upd running again", lambda: running(client, "upd", 2))
        assert all(t["Spec"]["ContainerSpec"]["Args"] == ["sleep", "1001"] for t in tasks)

        # A manual rollback swaps back to the previous spec (the failed one, as Docker does).
        docker(docker_env, "service", "rollback", "-d", "upd")
        svc = client.find("service", "upd")
        assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == ["false"]
        assert svc["UpdateStatus"]["State"] == "rollback_started"
    finally:
        docker(docker_env, "service", "rm", "upd", check=False)
