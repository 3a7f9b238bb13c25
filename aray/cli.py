"""The ``aray`` command line: start, stop and inspect clusters on this machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from ._cli_jobs import add_job_commands, cmd_job


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="aray",
        description="aray: an asyncio-native distributed runtime with Ray Core's API.",
        epilog="In Python: import aray; aray.init(). Docs: the docs/ folder (mkdocs serve).")
    parser.add_argument("--version", action="version", version=f"aray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_start(sub)
    _add_cluster_commands(sub)
    add_job_commands(sub)
    _add_microbenchmark(sub)
    _add_symmetric_run(sub)
    return parser


def _add_start(sub) -> None:
    start = sub.add_parser("start", help="start a node (a daemon): a cluster's head, or one "
                           "that joins a cluster", description="Start an aray node on this "
                           "machine: the head of a new cluster (--head), or a node that joins "
                           "the cluster whose head is at --address.")
    start.add_argument("--head", action="store_true", help="start the head of a new cluster")
    start.add_argument("--address", help="HOST:PORT of the head of the cluster to join; "
                       "HOST may be a DNS name (a Kubernetes Service), resolved anew at "
                       "each connection")
    start.add_argument("--port", type=int, default=6379, help="the head's port (default 6379)")
    start.add_argument("--num-cpus", type=float, help="CPUs to offer (default: all)")
    start.add_argument("--num-gpus", type=float, help="GPUs to offer (default: those "
                       "nvidia-smi lists, within CUDA_VISIBLE_DEVICES)")
    start.add_argument("--resources", default="{}", help='custom resources as JSON, e.g. '
                       '\'{"dataset": 1}\'')
    start.add_argument("--object-store-memory", type=int, help="object store bytes "
                       "(default: 30%% of memory, at most what /dev/shm has free)")
    start.add_argument("--memory", type=int, help="bytes of the `memory` resource tasks and "
                       "actors reserve (default: 70%% of memory less the object store; in a "
                       "container, give its memory limit)")
    start.add_argument("--labels", default="", help='the node\'s labels as a JSON object of '
                       'strings, e.g. \'{"zone": "a"}\' (or Ray\'s zone=a,gpu=h100), for '
                       "label_selector and NodeLabelSchedulingStrategy")
    start.add_argument("--labels-file", metavar="PATH", help="labels from a file: a JSON "
                       "object, or YAML's key: value lines (--labels adds to them)")
    start.add_argument("--token", help="the cluster's secret token (default: $ARAY_TOKEN, "
                       "else one is generated). Every user of the machine sees a command "
                       "line in `ps`: prefer ARAY_TOKEN, which only you and root can read")
    start.add_argument("--redis-password", help="the same as --token, as in Ray's command line")
    start.add_argument("--storage", default=os.environ.get("ARAY_STORAGE", ""),
                       metavar="REDIS_URL",
                       help="a head's storage, so that the cluster outlives the head: "
                            "redis://[:PASSWORD@]HOST:PORT[/DB] (rediss:// for TLS; default "
                            "$ARAY_STORAGE). A head restarted with the same storage and port "
                            "takes the cluster back")
    start.add_argument("--head-reconnect-timeout", type=float,
                       default=float(os.environ.get("ARAY_HEAD_RECONNECT_TIMEOUT", "60")),
                       metavar="SECONDS",
                       help="how long a node waits for a head with storage that went away "
                            "to come back (default 60, as Ray's)")
    start.add_argument("--node-ip-address",
                       help="the address this node listens on and other nodes reach it at "
                            "(default: 127.0.0.1, this machine only, for a head or a node "
                            "joining one on this machine; for a node joining a head "
                            "elsewhere, this machine's address on the route to that head)")
    start.add_argument("--dashboard-host", default="127.0.0.1",
                       help="where the head's dashboard listens (default 127.0.0.1: this "
                            "machine only; 0.0.0.0: every interface)")
    start.add_argument("--dashboard-port", type=int,
                       help="the dashboard's port (default 8265, or a free one if taken)")
    start.add_argument("--include-dashboard", type=_flag, default=True, metavar="BOOL",
                       help="false: start the head without its dashboard")
    start.add_argument("--object-manager-port", type=int, help=argparse.SUPPRESS)
    start.add_argument("--node-manager-port", type=int, default=0, metavar="PORT",
                       help="the node agent's TCP port, which other nodes dial and which "
                            "answers the health checks /healthz and /readyz (default: any "
                            "free port)")
    start.add_argument("--min-nodes", type=int, metavar="N",
                       help="(head) the cluster is ready once N nodes are alive, the head's "
                            "own counting: until then the head's /readyz answers 503 (see "
                            "`aray status --wait`; default 1)")
    start.add_argument("--block", action="store_true",
                       help="stay in the foreground; Ctrl-C or SIGTERM stops the node, and "
                            "so does the end of this process, even by SIGKILL")
    for name, env in (("cert", "CERT"), ("key", "KEY"), ("ca", "CA")):
        start.add_argument(f"--tls-{name}", metavar="PEM",
                           help=f"TLS for the node's TCP links: its {name} "
                                f"(default: $ARAY_TLS_{env}; give all three or none)")


def _add_cluster_commands(sub) -> None:
    """The commands that act on, or ask, a cluster running on this machine (or at
    --address)."""
    stop = sub.add_parser("stop", help="stop every aray node `aray start` began on this "
                          "machine, and remove what killed ones left")
    stop.add_argument("--force", action="store_true", help="kill at once (SIGKILL)")

    dashboard = sub.add_parser("dashboard", help="print the link that logs in to the "
                               "dashboard of the cluster running on this machine",
                               description="Print the dashboard's login link (it holds the "
                               "cluster's token: keep it to yourself) of a cluster running "
                               "on this machine, found as `aray status` finds it.")
    dashboard.add_argument("--address", help="HOST:PORT of the head, or a session directory "
                           "(default: the cluster running on this machine)")

    memory = sub.add_parser("memory", help="objects in this machine's object store, and its "
                            "use (of every node, for a cluster with no node here)")
    _add_target(memory)

    listing = sub.add_parser("list", help="the nodes, actors, jobs, tasks, objects or placement "
                             "groups of a running cluster", description="List what the head "
                             "of a running cluster knows of its nodes, actors, jobs, tasks, "
                             "objects or placement groups.")
    listing.add_argument("kind", choices=["nodes", "actors", "jobs", "tasks", "objects",
                                          "placement-groups"])
    listing.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                         help="only rows where KEY is VALUE (KEY!=VALUE: is not); repeatable")
    _add_target(listing)

    summary = sub.add_parser("summary", help="tasks of a running cluster, counted by name "
                             "and state")
    summary.add_argument("kind", choices=["tasks"])
    _add_target(summary)

    timeline = sub.add_parser("timeline", help="write the cluster's recent tasks as a Chrome "
                              "trace (open it in chrome://tracing or ui.perfetto.dev)")
    timeline.add_argument("file", help="the JSON file to write")
    _add_target(timeline)

    status = sub.add_parser("status", help="nodes and resources of a running cluster")
    status.add_argument("--wait", type=int, metavar="N", help="first wait until N nodes are "
                        "alive (a head not answering yet is asked again); exit 1 if they "
                        "are not within --timeout")
    status.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="how long --wait waits (default 300)")
    _add_target(status)


def _add_target(command) -> None:
    """--address and --token, for the commands that ask a running cluster."""
    command.add_argument("--address", help="HOST:PORT of the cluster's head, or the session "
                         "directory of a node of this machine (default: the cluster `aray "
                         "start` started on this machine, else the newest one a program "
                         "started with aray.init())")
    command.add_argument("--token", help="the cluster's token (default: the local session's, "
                         "else $ARAY_TOKEN, which keeps it out of `ps`)")


def _add_microbenchmark(sub) -> None:
    bench = sub.add_parser(
        "microbenchmark", help="Ray's microbenchmark workloads, and aray's own, on a local "
        "cluster", description="Run the workloads of `ray microbenchmark` (same names, same "
        "definitions) and aray's asyncio ones on a new local cluster, and print one line "
        "each: NAME per second MEAN +- STD over the timed rounds.")
    bench.add_argument("--filter", default=os.environ.get("TESTS_TO_RUN", ""),
                       help="only the workloads whose name contains this (default: "
                            "$TESTS_TO_RUN, as in Ray; empty: all)")
    bench.add_argument("--num-cpus", type=int, help="CPUs of the cluster (default: all)")
    bench.add_argument("--rounds", type=int, default=3, help="timed rounds per workload")
    bench.add_argument("--scale", type=float, default=1.0,
                       help="multiply the operations per round (0.1 for a quick look)")
    bench.add_argument("--json", metavar="FILE", help="also write the results there")


def _flag(text: str) -> bool:
    """A command-line boolean, as Ray's ``--include-dashboard`` takes it."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return
    try:
        commands = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status,
                    "memory": cmd_memory, "microbenchmark": cmd_microbenchmark,
                    "list": cmd_list, "summary": cmd_summary, "timeline": cmd_timeline,
                    "dashboard": cmd_dashboard, "job": cmd_job}
        commands["symmetric-run"] = cmd_symmetric_run
        if args.command == "start" and args.block and (args.token or args.redis_password):
            _exec_with_token_in_env(argv, args.token or args.redis_password)
        commands[args.command](args)
    except (OSError, ValueError, ConnectionError, LookupError, RuntimeError) as exc:
        what = f"job {args.job_command}" if args.command == "job" else args.command
        message = exc.args[0] if isinstance(exc, LookupError) and exc.args else exc
        print(f"aray {what}: {message}", file=sys.stderr)
        sys.exit(1)


def cmd_start(args) -> None:
    from ._health import check_min_nodes
    from ._local import LocalCluster
    from ._netaddr import default_node_ip
    from ._shmcheck import store_warning
    from .aio import dashboard_config

    if args.head == bool(args.address):
        raise ValueError("say what to start: `aray start --head` for a new cluster, or "
                         "`aray start --address HOST:PORT` to join the cluster of that head")
    resources = _start_resources(args)
    min_nodes = check_min_nodes(args.min_nodes, joining=bool(args.address))
    labels = _labels_from_args(args)
    _tls_from_args(args)
    token, join = _start_token(args)
    dashboard = None if join else dashboard_config(args.include_dashboard, args.dashboard_host,
                                                   args.dashboard_port)
    ip = args.node_ip_address or default_node_ip(join)
    warning = store_warning(resources, args.object_store_memory is not None)
    if warning:
        print(f"aray start: warning: {warning}", file=sys.stderr, flush=True)
    # --block: the node lives as long as this process, through the pipe to its stdin
    cluster = LocalCluster(resources=resources, object_store_memory=args.object_store_memory,
                           token=token, daemon=True, ip=ip, head_tcp=f"tcp://{ip}:{args.port}",
                           join=join, dashboard=dashboard, lifeline=args.block, labels=labels,
                           min_nodes=min_nodes, agent_port=args.node_manager_port,
                           storage=args.storage,
                           head_reconnect_timeout=args.head_reconnect_timeout)
    _write_token(cluster.session_dir, cluster.token)
    cluster.spawn()
    try:
        info = asyncio.run(cluster.wait_ready())
    except OSError as exc:
        if "in use" in str(exc) and "dashboard" not in str(exc):
            raise OSError(f"port {args.port} is in use: another aray head (or another "
                          "program) listens there. Stop it with `aray stop`, or pick another "
                          "--port.") from None
        raise
    if not args.block:
        cluster.detach()
    _point_latest(cluster.session_dir)
    _print_started(info, cluster.session_dir, bool(join))
    if min_nodes > 1:
        print(f"Ready once {min_nodes} nodes are alive: aray status --wait {min_nodes}",
              flush=True)
    if args.block and not _block_until_signal(cluster):
        raise RuntimeError("the node stopped by itself (it lost its head, or failed); its "
                           f"log: {os.path.join(cluster.session_dir, 'logs', 'node.log')}")


def _start_resources(args) -> dict:
    """The node's resources from ``aray start``'s options."""
    from .aio import node_resources

    try:
        custom = json.loads(args.resources)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--resources must be JSON, e.g. '{{\"dataset\": 1}}': {exc}") from None
    resources = node_resources(args.num_cpus, args.num_gpus, custom, args.object_store_memory)
    if args.memory is not None:
        if args.memory < 0:
            raise ValueError(f"--memory must be a number of bytes, not {args.memory}")
        resources["memory"] = float(args.memory)
    return resources


def _start_token(args) -> tuple[str | None, str]:
    """``(token, head address to join or "")``: the token from the options, the
    environment, a restarted head's storage or the local session of the head joined."""
    token = args.token or args.redis_password or os.environ.get("ARAY_TOKEN")
    if args.storage:
        if not args.head:
            raise ValueError("--storage is the head's: give it to `aray start --head`")
        from ._head.storage import check_url, stored_token

        check_url(args.storage)  # (a bad URL, or no redis client, is said now)
        token = token or stored_token(args.storage) or None  # a restarted head's cluster
    join = ""
    if args.address:
        join = _head_address(args.address)
        token = token or _local_token(args.address)
        if not token:
            raise ValueError(f"no token for the cluster at {args.address}: set ARAY_TOKEN "
                             "(or pass --token; the head printed where to find it)")
    return token, join


def _labels_from_args(args) -> dict:
    """The node's labels: those of --labels-file, then --labels (which wins), checked now."""
    from .node.labels import parse_labels_file, parse_labels_json

    labels = parse_labels_file(args.labels_file) if args.labels_file else {}
    if args.labels.strip():
        labels.update(parse_labels_json(args.labels))
    return labels


def _tls_from_args(args) -> None:
    """--tls-cert/--tls-key/--tls-ca into the environment, which the node process and its
    workers inherit; all three or none, and the files exist: said now."""
    from . import _tls

    for name, env in (("cert", "ARAY_TLS_CERT"), ("key", "ARAY_TLS_KEY"), ("ca", "ARAY_TLS_CA")):
        path = getattr(args, f"tls_{name}")
        if path:
            os.environ[env] = os.path.abspath(path)
    _tls.settings()


def _print_started(info: dict, session_dir: str, joined: bool) -> None:
    """What `aray start` tells its user: where the node is, and what to run next."""
    address = info["head_tcp"].split("://", 1)[1]
    pid = info["pid"]
    if joined:
        print(f"Started an aray node (pid {pid}) in the cluster at {address}.\n"
              f"  Session: {session_dir}\n\n"
              f"See the cluster:  aray status --address {address}\n"
              f"Stop this node:   aray stop", flush=True)
    else:
        dashboard_line = ""
        if info.get("dashboard_url"):
            dashboard_line = (f"  Dashboard: {info['dashboard_url']} (`aray dashboard` prints "
                              "a link that logs in)\n")
        print(f"Started an aray head node (pid {pid}).\n"
              f"  Address: {address}\n"
              f"  Session: {session_dir}\n"
              f"  Token:   in {os.path.join(session_dir, 'token')} (readable by you "
              "only)\n" + dashboard_line + "\n"
              f"Connect from Python on this machine:  aray.init(address=\"auto\")\n"
              f"Add a node (another machine too):     ARAY_TOKEN=TOKEN aray start --address "
              f"{address}\n"
              f"See the cluster:                      aray status\n"
              f"Stop it:                              aray stop", flush=True)


def _exec_with_token_in_env(argv: list[str], token: str) -> None:
    """``aray start --block --token X``: run again, the same process (same pid, for a
    supervisor), without ``--token X`` on the command line, which every user of the machine
    can read in ``ps`` for as long as the command runs, and with X in ``ARAY_TOKEN``: the
    environment of a process is readable by its user and root only. The token stays visible
    for the moment before this exec; for not even that, give it in ARAY_TOKEN."""
    # -P: the working directory must not shadow the installed package (as for the node)
    os.execve(sys.executable, [sys.executable, "-P", "-m", "aray", *_without_token(argv)],
              {**os.environ, "ARAY_TOKEN": token})


def _without_token(argv: list[str]) -> list[str]:
    """``argv`` without ``--token X``/``--redis-password X`` in any spelling argparse takes
    (``--token=X``, or an unambiguous prefix such as ``--tok X``)."""
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        name, equals, _ = arg.partition("=")
        if len(name) > 3 and any(option.startswith(name)
                                 for option in ("--token", "--redis-password")):
            if not equals:
                next(args, None)  # the value
            continue
        kept.append(arg)
    return kept


def _head_address(address: str) -> str:
    """``HOST:PORT`` (or ``tcp://``/``aray://`` forms) as the head's tcp:// address."""
    from ._link import parse_address

    if "://" not in address:
        address = "tcp://" + address
    kind, host, port = parse_address(address)
    if kind != "tcp" or not port:
        raise ValueError(f"--address must be HOST:PORT, like 127.0.0.1:6379, not {address!r}")
    return f"tcp://{host}:{port}"


def _local_token(address: str) -> str:
    """The token of the head at ``address`` when that head runs on this machine."""
    from ._local import find_cluster

    try:
        return find_cluster(address)["token"]
    except ConnectionError:
        return ""


def _write_token(session_dir: str, token: str) -> None:
    fd = os.open(os.path.join(session_dir, "token"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)


def _point_latest(session_dir: str) -> None:
    latest = os.path.join(os.path.dirname(session_dir), "session_latest")
    tmp = latest + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(session_dir, tmp)
    os.replace(tmp, latest)


def _block_until_signal(cluster) -> bool:
    """--block: stay until Ctrl-C/SIGTERM (then stop the node) or until the node exits.
    Should this process die without stopping it, the node sees its stdin close, and stops.
    False when the node stopped by itself (a supervisor then sees the command fail)."""
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop["now"] and cluster.proc.poll() is None:
        time.sleep(0.2)
    running = cluster.proc.poll() is None
    # closes the lifeline (the node stops as for SIGTERM), waits, and removes what the node
    # could not remove itself
    cluster.stop()
    if running:
        print("Stopped the aray node.")
    return running


def _stop_pids(pids: list[int], force: bool, grace: float = 10.0) -> None:
    from ._local import pid_alive

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def cmd_stop(args) -> None:
    from ._local import remove_node_files, running_clusters, session_dirs

    clusters = running_clusters()
    _stop_pids([int(c["pid"]) for c in clusters], force=args.force)
    stopped = {c["session_dir"] for c in clusters}
    # the store and spill files of these nodes, if one was killed in the end, and of nodes
    # killed before (kill -9), whose pid is dead: nothing else would ever remove them
    cleaned = {path for path in session_dirs() if remove_node_files(path)} - stopped
    if clusters:
        print(f"Stopped {len(clusters)} aray node{'s' if len(clusters) > 1 else ''}.")
    if cleaned:
        print(f"Removed the object store files of {len(cleaned)} aray "
              f"node{'s' if len(cleaned) > 1 else ''} that had been killed.")
    if not clusters and not cleaned:
        print("No aray cluster started with `aray start` is running on this machine; "
              "nothing to stop.")


def cmd_dashboard(args) -> None:
    """Print the dashboard's login link (URL/?token=...) of a cluster of this machine."""
    from ._local import login_url

    info = _reach(args, None)
    if not info.get("dashboard_url"):
        raise ValueError("that cluster has no dashboard: its head runs on another machine, "
                         "or was started with --include-dashboard false")
    print(login_url(info["dashboard_url"], info["token"]))


def _reach(args, token: str | None) -> dict:
    """The cluster the command asks (see :func:`aray._local.reach_cluster`); when several
    run on this machine, says on stderr which one it asks."""
    from ._local import reach_cluster

    info = reach_cluster(args.address, token)
    _note(args)(info["note"])
    return info


def _note(args):
    """Tells the user, on stderr (stdout stays the command's output), a note about the
    cluster chosen; nothing for an empty note."""
    def note(text: str) -> None:
        if text:
            print(f"aray {args.command}: {text}", file=sys.stderr, flush=True)
    return note


def cmd_status(args) -> None:
    if args.wait is not None:
        from ._health import wait_for_nodes
        from ._local import reach_cluster

        # (a note on which of several clusters is asked comes once, below)
        wait_for_nodes(args.wait, args.timeout, lambda: [
            n for n in asyncio.run(_cluster_state(reach_cluster(args.address, args.token)))
            if n["Alive"]])
    nodes = asyncio.run(_cluster_state(_reach(args, args.token)))
    alive = [n for n in nodes if n["Alive"]]
    print(f"{len(alive)} node{'s' if len(alive) != 1 else ''} alive, "
          f"{len(nodes) - len(alive)} dead")
    total: dict[str, float] = {}
    free: dict[str, float] = {}
    for n in nodes:
        state = "alive" if n["Alive"] else "dead"
        print(f"  node {n['NodeID'][:12]}  {n['NodeManagerAddress']:<15} {state}")
        if n["Alive"]:
            for k, v in n["Resources"].items():
                total[k] = total.get(k, 0) + v
            for k, v in n["Available"].items():
                free[k] = free.get(k, 0) + v
    print("Resources (in use / total; sizes: total):")
    for k in sorted(total):
        if k.startswith("node:"):
            continue
        used = total[k] - free.get(k, 0)
        if k in ("memory", "object_store_memory"):  # sizes, not reservations: see `aray memory`
            print(f"  {k:<20} {total[k] / 2**30:.2f} GiB")
        else:
            print(f"  {k:<20} {used:g} / {total[k]:g}")
    stores = [n.get("ObjectStore") or {} for n in alive]
    used_mib = sum(st.get("used_bytes", 0) for st in stores) / 2**20
    cap_mib = sum(st.get("capacity_bytes", 0) for st in stores) / 2**20
    objects = sum(st.get("num_objects", 0) for st in stores)
    spilled = sum(st.get("num_spilled", 0) for st in stores)
    print(f"Object store: {used_mib:.1f} MiB used of {cap_mib:.1f} MiB, {objects} objects "
          f"({spilled} spilled to disk)")
    demands: dict[str, list] = {}
    for n in alive:
        for shape, count, infeasible in n.get("PendingDemands") or []:
            key = ", ".join(f"{k}: {v:g}" for k, v in sorted(shape.items()))
            entry = demands.setdefault(key, [0, infeasible])
            entry[0] += count
            entry[1] = entry[1] and infeasible
    print("Pending demands:" + ("" if demands else " none"))
    for key, (count, infeasible) in sorted(demands.items()):
        note = "  (infeasible: no node can run it)" if infeasible else ""
        print(f"  {{{key}}}: {count} pending{note}")


LIST_COLUMNS = {
    "nodes": ["NodeID", "Alive", "NodeManagerAddress", "Resources", "Labels"],
    "actors": ["actor_id", "class_name", "name", "state", "node_id", "pid", "restarts"],
    "jobs": ["job_id", "driver_pid", "namespace", "alive"],
    "tasks": ["task_id", "name", "type", "state", "node_id", "worker_pid", "duration_s",
              "error"],
    "objects": ["object_id", "size", "owner", "nodes", "spilled"],
    "placement_groups": ["placement_group_id", "name", "state", "strategy", "bundles",
                         "bundles_to_node_id"],
}


def cmd_list(args) -> None:
    from .util.state import _rows

    filters = []
    for text in args.filter:
        key, op, value = text.partition("!=") if "!=" in text else text.partition("=")
        if not op or not key:
            raise ValueError(f"--filter wants KEY=VALUE or KEY!=VALUE, not {text!r}")
        filters.append((key, op, value))
    kind = args.kind.replace("-", "_")
    rows = _rows(kind, filters, args.address or "auto", args.token, _note(args))
    columns = LIST_COLUMNS[kind]

    def cell(row: dict, column: str) -> str:
        value = row.get(column, "")
        if isinstance(value, float):
            return f"{value:.3f}"
        if column == "node_id" and len(str(value)) > 12 and args.kind == "tasks":
            return str(value)[:12]
        if column == "nodes":  # where an object's copies are
            return ",".join(node_id[:12] for node_id in value)
        if column == "bundles_to_node_id":  # bundle index -> node
            return ", ".join(f"{i}: {node[:12]}" for i, node in sorted(value.items()))
        if column == "bundles":  # bundle index -> resources
            return "; ".join(f"{i}: " + ", ".join(f"{k}: {v:g}" for k, v in sorted(b.items()))
                             for i, b in sorted(value.items()))
        if column == "Labels":  # (the node id is the first column already)
            return ",".join(f"{k}={v}" for k, v in sorted(value.items())
                            if k != "ray.io/node-id")
        if isinstance(value, dict):  # resources; memory sizes in GiB
            return ", ".join(
                f"{k}: {v / 2**30:.1f} GiB" if k in ("memory", "object_store_memory")
                else f"{k}: {v:g}" for k, v in sorted(value.items()) if not k.startswith("node:"))
        return str(value)

    table = [columns] + [[cell(row, c) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())
    noun = args.kind.replace("-", " ")
    print(f"({len(rows)} {noun if len(rows) != 1 else noun[:-1]})")


def cmd_summary(args) -> None:
    from .util.state import _rows

    counts = _rows("task_summary", None, args.address or "auto", args.token, _note(args))[0]
    states = ["PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "RUNNING", "FINISHED", "FAILED"]
    width = max([len(name) for name in counts] + [4])
    print(f"{'name':<{width}}  " + "  ".join(f"{s:>{len(s)}}" for s in states))
    for name in sorted(counts):
        print(f"{name:<{width}}  " + "  ".join(f"{counts[name].get(s, 0):>{len(s)}}"
                                               for s in states))
    print(f"({sum(sum(c.values()) for c in counts.values())} tasks)")


def cmd_timeline(args) -> None:
    """A Chrome trace: one complete event ("ph": "X") per task that ran, a process row per
    node and a thread row per worker."""
    from .util.state import _rows

    events = []
    for task in _rows("tasks", None, args.address or "auto", args.token, _note(args)):
        if task.get("started_at") is None or task.get("ended_at") is None:
            continue
        events.append({
            "name": task["name"], "cat": task["type"], "ph": "X",
            "ts": task["started_at"] * 1e6, "dur": (task["ended_at"] - task["started_at"]) * 1e6,
            "pid": f"node {task['node_id'][:12]}", "tid": f"worker {task['worker_pid']}",
            "args": {"task_id": task["task_id"], "state": task["state"],
                     "job_id": task["job_id"], "error": task["error"]}})
    with open(args.file, "w") as f:
        json.dump(events, f)
    print(f"Wrote {len(events)} tasks to {args.file}; open it in chrome://tracing or "
          "https://ui.perfetto.dev")


def cmd_microbenchmark(args) -> None:
    import platform

    from ._perf import microbenchmark

    print(f"aray microbenchmark: {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{args.rounds} timed rounds per workload", flush=True)
    results = microbenchmark(args.filter, args.num_cpus, args.rounds, args.scale,
                             write=lambda line: print(line, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


async def ask(address: str, token: str, make):
    """One request to a head or node agent (see :func:`aray._link.ask`)."""
    from ._link import ask as ask_once

    return await ask_once(address, token, make, name="cli")


def cmd_memory(args) -> None:
    info = _reach(args, args.token)
    stats, objects = asyncio.run(_store_stats(info))
    mib = 2**20
    count = stats["num_objects"]
    where = "Object store" if info["node_address"] else "Object stores (every node)"
    print(f"{where}: {stats['used_bytes'] / mib:.1f} MiB used of "
          f"{stats['capacity_bytes'] / mib:.1f} MiB, {count} object{'' if count == 1 else 's'} "
          f"({stats['num_spilled']} spilled to disk, {stats['spilled_bytes'] / mib:.1f} MiB)")
    if objects:
        print(f"  {'object id':<34} {'size':>12}  {'where':<15} owner")
        for obj in sorted(objects, key=lambda o: -o["size"]):
            where = "disk (spilled)" if obj["spilled"] else "shared memory"
            print(f"  {obj['object_id']:<34} {obj['size']:>12,}  {where:<15} {obj['owner']}")


async def _store_stats(info: dict) -> tuple[dict, list]:
    """This machine's node's store (its use, its objects); for a cluster with no node
    here, every node's, added up, through the head."""
    from . import _protocol as P

    if info["node_address"]:
        reply = await ask(info["node_address"], info["token"], lambda r: P.GetStoreStats(r))
        return reply.stats, reply.objects
    nodes = await _cluster_state(info)
    stats = {key: sum((n.get("ObjectStore") or {}).get(key, 0) for n in nodes if n["Alive"])
             for key in ("used_bytes", "capacity_bytes", "num_objects", "num_spilled",
                         "spilled_bytes")}
    reply = await ask(info["head_address"], info["token"], lambda r: P.GetState(r, "objects"))
    if reply.error:
        raise ValueError(reply.error)
    return stats, reply.rows


async def _cluster_state(info: dict) -> list[dict]:
    from . import _protocol as P

    reply = await ask(info["head_address"], info["token"], lambda r: P.GetClusterState(r))
    return reply.nodes


# --- aray symmetric-run (see aray/_slurm.py) ---------------------------------------------


def _add_symmetric_run(sub) -> None:
    """``aray symmetric-run``: its own options, and ``aray start``'s (copies of them: the
    start parser's own stay as they are) but those it sets itself; see :mod:`aray._slurm`."""
    import copy

    run = sub.add_parser(
        "symmetric-run",
        help="run on every node of an allocation (srun): start the cluster, run a command on "
             "its head, stop the cluster",
        usage="aray symmetric-run --address HOST:PORT [--min-nodes N] [aray start options] "
              "-- COMMAND [ARGS ...]",
        description="Run the same command on every node (under Slurm: srun "
                    "--ntasks-per-node=1 aray symmetric-run ...). The head (the first node "
                    "of the allocation; elsewhere, the machine that has the address) starts "
                    "the cluster, waits for --min-nodes nodes, runs COMMAND with ARAY_ADDRESS "
                    "set (aray.init() joins), and stops the cluster when COMMAND exits, with "
                    "its exit code. The other nodes join and stay until the head goes away. "
                    "SIGTERM (scancel) stops COMMAND, then the nodes. As Ray's `ray "
                    "symmetric-run`; see docs/slurm.md.")
    # those it sets itself or has its own of (aray start may come to have them too)
    own = {"help", "address", "head", "port", "block", "node_ip_address", "min_nodes",
           "wait_timeout", "token_file", "entrypoint"}
    for action in sub.choices["start"]._actions:
        if action.dest not in own:
            run._add_action(copy.copy(action))
    run.add_argument("--address", required=True, metavar="HOST:PORT",
                     help="the head's address: an address of the first node of the "
                          "allocation, and the port the head listens on")
    run.add_argument("--min-nodes", type=int, metavar="N",
                     help="run COMMAND once N nodes (the head's included) have joined "
                          "(default: the Slurm step's node count, else 1)")
    run.add_argument("--wait-timeout", type=float, default=120.0, metavar="SECONDS",
                     help="how long the head waits for the nodes, and the nodes for the head "
                          "(default 120)")
    run.add_argument("--token-file", metavar="PATH",
                     help="the head writes a new token there (mode 0600) and the nodes read "
                          "it: a path every node sees (default under Slurm, when neither "
                          "--token nor ARAY_TOKEN gives one: ~/.aray/slurm-JOB.STEP.token)")
    # what symmetric-run sets itself: refused (see aray._slurm.plan)
    for flag in ("--head", "--block"):
        run.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--port", type=int, help=argparse.SUPPRESS)
    run.add_argument("--node-ip-address", help=argparse.SUPPRESS)
    run.add_argument("entrypoint", nargs="*", metavar="-- COMMAND", help=argparse.SUPPRESS)


def start_parser() -> argparse.ArgumentParser:
    """The parser of ``aray start``'s options, which ``aray symmetric-run`` passes on.

    Example:
        >>> start_parser().parse_args(["--num-cpus", "2"]).num_cpus
        2.0
    """
    sub = next(action for action in build_parser()._actions
               if isinstance(action, argparse._SubParsersAction))
    return sub.choices["start"]


def cmd_symmetric_run(args) -> None:
    """``aray symmetric-run``: this node's part (see :func:`aray._slurm.symmetric_run`);
    exits with its exit code.

    Example:
        >>> main(["symmetric-run", "--address", "127.0.0.1:6392", "--include-dashboard",
        ...       "false", "--", "true"])  # doctest: +SKIP
    """
    from ._slurm import symmetric_run

    _tls_from_args(args)  # this process asks the head too, and the entrypoint inherits them
    sys.exit(symmetric_run(args, start_parser()))
