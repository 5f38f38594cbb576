"""Runs the Deployments of a rendered Helm chart as local processes (deploy/check-deploy.sh).

Each container is started from its rendered command, with its ConfigMap's config.toml where the
volume mounts it and its rendered environment (secretKeyRef filled from SECRETS below, fieldRef
with stand-ins, $(VAR) expanded as Kubernetes does). Only what cannot hold on one machine is
changed, and printed: the listen addresses (free local ports instead of 0.0.0.0:8080/9090, after
checking the rendered ones match the container ports), the pipeline namespace (a fresh one, so
nothing is shared with other users of the local Redis), and the dead-letter handler's durability
requirement (the local Redis keeps nothing on disk). RabbitMQ is reached in a vhost made for the
run and deleted afterwards, with everything the services declared in it.

Passes when every service answers its rendered readiness probe within STARTUP, every KEDA
ScaledObject watches a queue its Deployment really consumes (named from the rendered namespace,
found declared in the vhost once the services are up) with the broker URL the services use, and
every service then exits 0 on SIGTERM within the rendered terminationGracePeriodSeconds.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import yaml

STARTUP = 60.0
BIN_DIRS = [os.environ.get("HANDOFF_SMOKE_BIN_DIR", ""), "target/debug"]


def fail(message):
    print(f"helm smoke: {message}", file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def expand(value, env):
    """$(VAR) as Kubernetes expands it: from variables defined earlier, else left as is."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def find_binary(name):
    for directory in BIN_DIRS:
        if directory and os.access(os.path.join(directory, name), os.X_OK):
            return os.path.join(directory, name)
    fail(f"no {name} binary in {[d for d in BIN_DIRS if d]}; build the workspace first")


def main(rendered_path):
    with open(rendered_path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if not deployments:
        fail("the render has no Deployment")

    run_id = uuid.uuid4().hex[:10]
    vhost = f"helm-smoke-{run_id}"
    namespace = f"helm-smoke-{run_id}"
    secrets = {
        "amqp-url": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "redis-url": "redis://127.0.0.1:6379/",
        "hubspot-token": "pat-helm-smoke",
        "mailchimp-api-key": "helmsmoke-us21",
        "dead-letters-redis-url": "redis://127.0.0.1:6379/",
    }
    work = tempfile.mkdtemp(prefix="helm-smoke-")
    run("rabbitmqctl", "-q", "add_vhost", vhost)
    run("rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    started = []
    try:
        for deployment in deployments:
            started.append(start(deployment, config_maps, secrets, namespace, work))
        for svc in started:
            wait_ready(svc)
        check_queue_scalers(docs, deployments, vhost, namespace)
        check_pod_monitors(docs, started)
        for svc in started:
            svc["process"].send_signal(signal.SIGTERM)
        for svc in started:
            try:
                code = svc["process"].wait(timeout=svc["grace"])
            except subprocess.TimeoutExpired:
                fail(f"{svc['name']} did not exit within its {svc['grace']} s grace after SIGTERM")
            if code != 0:
                fail(f"{svc['name']} exited with {code} after SIGTERM; its log:\n{tail(svc)}")
            print(f"    {svc['name']}: ready, then stopped cleanly on SIGTERM")
    finally:
        for svc in started:
            if svc["process"].poll() is None:
                svc["process"].kill()
                svc["process"].wait()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], stdout=subprocess.DEVNULL)
        keys = subprocess.run(
            ["redis-cli", "--scan", "--pattern", f"{namespace}:*"], capture_output=True, text=True
        ).stdout.split()
        for i in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "del", *keys[i : i + 500]], stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


def check_pod_monitors(docs, started):
    """Each PodMonitor selects every service's pods, on a port they have, at a path where the
    running service answers in Prometheus' text format."""
    for monitor in (d for d in docs if d["kind"] == "PodMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        for svc in started:
            labels = svc["pod_labels"]
            if any(labels.get(k) != v for k, v in wanted.items()):
                fail(f"PodMonitor {monitor['metadata']['name']} does not select {svc['name']}'s pods")
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                if endpoint["port"] not in svc["ports"]:
                    fail(f"{svc['name']} has no port {endpoint['port']!r} for the PodMonitor")
                url = f"http://127.0.0.1:{svc['ports'][endpoint['port']]}{endpoint['path']}"
                with urllib.request.urlopen(url, timeout=5) as answer:
                    kind = answer.headers.get("Content-Type", "")
                # Prometheus' text format (a service that has counted nothing yet sends no lines).
                if answer.status != 200 or not kind.startswith("text/plain; version=0.0.4"):
                    fail(f"{svc['name']}'s {url} answered {answer.status} {kind!r}, not Prometheus text")
            print(f"    {svc['name']}: its PodMonitor scrapes {endpoint['path']} on port {endpoint['port']}")


def check_queue_scalers(docs, deployments, vhost, namespace):
    """Each ScaledObject's rabbitmq trigger names the queue its target consumes, and reads the
    broker's URL from the Secret key the services read it from."""
    by_name = {d["metadata"]["name"]: d for d in deployments}
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    declared = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "--no-table-headers"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    for scaled in (d for d in docs if d["kind"] == "ScaledObject"):
        target = by_name.get(scaled["spec"]["scaleTargetRef"]["name"])
        if target is None:
            fail(f"ScaledObject {scaled['metadata']['name']} targets no rendered Deployment")
        (container,) = target["spec"]["template"]["spec"]["containers"]
        env = {v["name"]: v for v in container["env"]}
        rendered_namespace = env["HANDOFF_NAMESPACE"]["value"]
        for trigger in scaled["spec"]["triggers"]:
            queue = trigger["metadata"]["queueName"]
            prefix = rendered_namespace + "."
            if not queue.startswith(prefix):
                fail(f"{container['name']}'s scaler watches {queue}, outside namespace {rendered_namespace}")
            local = namespace + "." + queue[len(prefix) :]
            if local not in declared:
                fail(f"{container['name']}'s scaler watches {queue}, but the service declared no {local}")
            auth = auths.get(trigger["authenticationRef"]["name"])
            if auth is None:
                fail(f"{container['name']}'s scaler authenticates with a TriggerAuthentication not rendered")
            (ref,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "host"]
            bus = env["HANDOFF_BUS__URL"]["valueFrom"]["secretKeyRef"]
            if (ref["name"], ref["key"]) != (bus["name"], bus["key"]):
                fail(f"{container['name']}'s scaler reads {ref}, the service {bus}")
            print(f"    {container['name']}: its scaler watches {queue}, which it consumes")


def start(deployment, config_maps, secrets, namespace, work):
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    name = container["name"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    directory = os.path.join(work, name)
    os.makedirs(directory)

    # The ConfigMap's files where the container mounts them (under the run's directory).
    mounts = {}
    for mount in container.get("volumeMounts", []):
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        data = config_maps.get(volume["configMap"]["name"])
        if data is None:
            fail(f"{name} mounts ConfigMap {volume['configMap']['name']}, which is not rendered")
        local = os.path.join(directory, mount["name"])
        os.makedirs(local)
        for file, text in data.items():
            with open(os.path.join(local, file), "w") as f:
                f.write(text)
        mounts[mount["mountPath"]] = local

    env = {"PATH": os.environ["PATH"]}
    for var in container.get("env", []):
        if "value" in var:
            value = expand(var["value"], env)
        elif "secretKeyRef" in var["valueFrom"]:
            key = var["valueFrom"]["secretKeyRef"]["key"]
            if key not in secrets:
                fail(f"{name} takes {var['name']} from secret key {key!r}, unknown to this check")
            value = secrets[key]
        else:
            value = "helm-smoke"
        for mount_path, local in mounts.items():
            if value.startswith(mount_path + "/"):
                value = local + value[len(mount_path) :]
        env[var["name"]] = value

    # The rendered listen addresses must be the container's ports, on every interface.
    overrides = {}
    for variable, port_name in (("HANDOFF_ADMIN__LISTEN", "admin"), ("HANDOFF_HTTP__LISTEN", "http")):
        if port_name not in ports:
            continue
        if env.get(variable) != f"0.0.0.0:{ports[port_name]}":
            fail(f"{name}: {variable} is {env.get(variable)!r}, not the {port_name} port {ports[port_name]}")
        local_port = free_port()
        overrides[variable] = f"127.0.0.1:{local_port}"
        ports[port_name] = local_port
    overrides["HANDOFF_NAMESPACE"] = namespace
    if container["command"][0] == "handoff-dlq":
        overrides["HANDOFF_STORE__REQUIRE_DURABLE"] = "false"
    env.update(overrides)
    print(f"    {name}: {' '.join(container['command'])}, local changes {overrides}")

    probe = container["readinessProbe"]["httpGet"]
    port = probe["port"] if isinstance(probe["port"], int) else ports[probe["port"]]
    log = open(os.path.join(directory, "log"), "w")
    process = subprocess.Popen(
        [find_binary(container["command"][0]), *container["command"][1:]],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return {
        "name": name,
        "process": process,
        "ready_url": f"http://127.0.0.1:{port}{probe['path']}",
        "grace": pod["terminationGracePeriodSeconds"],
        "ports": ports,
        "pod_labels": deployment["spec"]["template"]["metadata"]["labels"],
        "log": log.name,
    }


def wait_ready(svc):
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if svc["process"].poll() is not None:
            fail(f"{svc['name']} exited with {svc['process'].returncode}; its log:\n{tail(svc)}")
        try:
            with urllib.request.urlopen(svc["ready_url"], timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    fail(f"{svc['name']} was not ready at {svc['ready_url']} within {STARTUP:.0f} s; its log:\n{tail(svc)}")


def tail(svc):
    with open(svc["log"]) as f:
        return "".join(f.readlines()[-20:])


if __name__ == "__main__":
    main(sys.argv[1])
