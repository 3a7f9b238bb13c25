"""aray on Slurm: ``aray symmetric-run`` and examples/slurm/aray.sbatch on a real Slurm.

The module's fixture configures a Slurm cluster of two logical nodes on this machine
(Debian's slurm-wlm, which .ci/run installs with munge): a munge key and ``munged`` of its
own, ``slurmctld`` and one ``slurmd`` per node (``slurmd -N n1``), all in a temporary
directory and in a network namespace of their own that has nothing but loopback (Slurm's
daemons listen on every interface; there, that is 127.0.0.1 alone), started and stopped by
pid. Without Slurm (or without the rights to run it) those tests are skipped, saying why;
the unit tests of the host-list parser, the resource mapping and the roles run anyway.
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest
from conftest import wait_until, watch_root

from aray import _slurm
from aray._local import store_dir_for
from aray._slurm import (
    allocation_hosts,
    allocation_node_count,
    allocation_resources,
    default_token_file,
    expand_hostlist,
    is_head,
    job_memory,
    memory_split,
    plan,
    start_options,
)
from aray.cli import build_parser, start_parser

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "slurm" / "aray.sbatch"
SBIN = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
TOOLS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue",
         "scancel", "scontrol", "unshare", "nsenter", "ip"]
NODES = ["n1", "n2"]
#: the aray head's address, inside the cluster's network namespace (nothing else is there)
HEAD = "127.0.0.1:6379"


# --- unit tests: the host list, the allocation's resources, the roles -----------------------


@pytest.mark.parametrize("text, hosts", [
    ("n1", ["n1"]),
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("node[08-10]", ["node08", "node09", "node10"]),
    ("gpu[1-2],cpu5", ["gpu1", "gpu2", "cpu5"]),
    ("a,b c", ["a", "b", "c"]),
    ("r[1-2]-n[1,3]", ["r1-n1", "r1-n3", "r2-n1", "r2-n3"]),
    ("n[1-2].cluster", ["n1.cluster", "n2.cluster"]),
    ("n[7]", ["n7"]),
    ("", []),
])
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text, problem", [
    ("n[1-3", "a '[' with no ']'"), ("n1-3]", "a ']' with no '['"),
    ("n[3-1]", "goes down"), ("n[a-b]", "is not a number"), ("n[[1]]", "inside brackets"),
    ("n[1-]", "is not a number"),
])
def test_expand_hostlist_refuses_what_slurm_would(text, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        expand_hostlist(text)  # (the message names the list and what is wrong)


def test_allocation_hosts_without_a_working_scontrol():
    # scontrol needs a configuration (SLURM_CONF) to run at all: without one, the parser
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "PATH": SBIN, "SLURM_CONF": "/nonexistent"}
    assert allocation_hosts(env) == ["n1", "n2"]


def test_allocation_hosts_prefers_the_step():
    env = {"SLURM_JOB_NODELIST": "n[1-4]", "SLURM_STEP_NODELIST": "n[3-4]", "PATH": ""}
    assert allocation_hosts(env) == ["n3", "n4"]
    assert allocation_hosts({"PATH": ""}) == []
    assert allocation_node_count({"SLURM_STEP_NUM_NODES": "2", "SLURM_JOB_NUM_NODES": "4"}) == 2
    assert allocation_node_count({"SLURM_NNODES": "3"}) == 3


SLURM = {"SLURM_JOB_ID": "12", "SLURMD_NODENAME": "n1", "SLURM_NODEID": "0"}


@pytest.mark.parametrize("env, expected", [
    # outside Slurm: what aray start finds
    ({}, {"num_cpus": None, "num_gpus": None, "memory": None}),
    ({"SLURM_CPUS_ON_NODE": "8"}, {"num_cpus": None, "num_gpus": None, "memory": None}),
    # CPUs and memory per node (MiB), no GPU asked for
    ({**SLURM, "SLURM_CPUS_ON_NODE": "8", "SLURM_MEM_PER_NODE": "2048"},
     {"num_cpus": 8.0, "num_gpus": 0, "memory": 2048 * 2**20}),
    # memory per CPU, times the CPUs of the node
    ({**SLURM, "SLURM_CPUS_ON_NODE": "4", "SLURM_MEM_PER_CPU": "1000"},
     {"num_cpus": 4.0, "num_gpus": 0, "memory": 4000 * 2**20}),
    # GPUs: Slurm's count, or (CUDA_VISIBLE_DEVICES set) what aray's detection counts there
    ({**SLURM, "SLURM_GPUS_ON_NODE": "2"}, {"num_cpus": None, "num_gpus": 2, "memory": None}),
    ({**SLURM, "SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,1"},
     {"num_cpus": None, "num_gpus": None, "memory": None}),
    # a memory that the job did not ask for: the node's, as aray start finds it
    ({**SLURM, "SLURM_CPUS_ON_NODE": "2(x3)"}, {"num_cpus": 2.0, "num_gpus": 0, "memory": None}),
])
def test_allocation_resources(env, expected):
    assert allocation_resources(env) == expected


@pytest.mark.parametrize("job, cpus, memory", [
    ("JobId=3 MinMemoryNode=300M TRES=cpu=2,mem=600M", 1, 300 * 2**20),
    ("JobId=3 MinMemoryNode=2G", None, 2 * 2**30),
    ("JobId=3 MinMemoryCPU=100M", 4, 400 * 2**20),
    ("JobId=3 MinMemoryCPU=100M", None, None),  # per CPU, and the CPUs unknown
    ("JobId=3 MinMemoryNode=0", 2, None),  # the node's memory: as aray start finds it
    ("JobId=3 MinMemoryNode=1.5G", 1, int(1.5 * 2**30)),
    ("", 1, None),
])
def test_job_memory(job, cpus, memory):
    assert job_memory(job, cpus) == memory


def test_memory_split_fits_the_allocation():
    mib = 2**20
    memory, store = memory_split(1000 * mib, None, 10**12)
    assert store == int(1000 * mib * 0.3) and memory + store == int(1000 * mib * 0.7)
    assert memory_split(1000 * mib, None, 100 * mib) == (600 * mib, 100 * mib)  # small shm
    assert memory_split(1000 * mib, 900 * mib, 10**12) == (0, 900 * mib)


def _args(*argv):
    return build_parser().parse_args(["symmetric-run", *argv])


def test_start_options_pass_the_users_and_the_allocations():
    args = _args("--address", "10.0.0.1:6379", "--num-cpus", "3", "--resources",
                 '{"disk": 1}', "--labels", "zone=a", "--", "python", "x.py")
    options = start_options(args, start_parser(), {"num_cpus": 8.0, "num_gpus": 1,
                                                   "memory": 1000 * 2**20})
    given = dict(zip(options[::2], options[1::2]))
    assert given["--num-cpus"] == "3.0"  # the user's wins over the allocation's
    assert given["--num-gpus"] == "1"
    assert given["--labels"] == "zone=a"
    memory, store = memory_split(1000 * 2**20, None, _slurm_shm_free() or 1000 * 2**20)
    assert json.loads(given["--resources"]) == {"disk": 1, "memory": memory}
    assert int(given["--object-store-memory"]) == store
    assert "--address" not in options and "--token" not in options
    # the user's memory resource is left as it is
    args = _args("--address", "h:1", "--resources", '{"memory": 5}', "--", "x")
    assert "--object-store-memory" not in start_options(args, start_parser(),
                                                        {"memory": 2**30})


def _slurm_shm_free():
    from aray.aio import _shm_free_bytes

    return _shm_free_bytes()


def test_the_start_command_keeps_its_options():
    # symmetric-run takes copies of aray start's options: start's own stay as they are
    args = build_parser().parse_args(["start", "--address", "h:1", "--port", "7", "--block"])
    assert (args.address, args.port, args.block, args.head) == ("h:1", 7, True, False)
    args = _args("--address", "h:2", "--num-cpus", "2", "--", "python", "-c", "--address")
    assert (args.address, args.num_cpus, args.entrypoint) == ("h:2", 2.0,
                                                              ["python", "-c", "--address"])


@pytest.mark.parametrize("option", [["--head"], ["--block"], ["--port", "1"],
                                    ["--node-ip-address", "1.2.3.4"]])
def test_plan_refuses_what_it_sets_itself(option):
    with pytest.raises(ValueError, match="symmetric-run's to set"):
        plan(_args("--address", "127.0.0.1:6379", *option, "--", "x"), start_parser(), {})


def test_plan_roles_and_tokens(tmp_path):
    env = {"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "0", "SLURMD_NODENAME": "n2",
           "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_NUM_NODES": "2",
           "SLURM_CPUS_ON_NODE": "4", "HOME": str(tmp_path), "PATH": ""}
    worker = plan(_args("--address", "127.0.0.1:6379", "--", "python", "t.py"),
                  start_parser(), env)
    # n2 is not the first node: it joins; it waits for the step's 2 nodes; no token was
    # given, so it reads the one the head writes in the default token file
    assert not worker.head and worker.min_nodes == 2 and worker.token is None
    assert worker.token_file == str(tmp_path / ".aray" / "slurm-12.0.token")
    assert worker.start_options[:4] == ["--num-cpus", "4.0", "--num-gpus", "0"]
    head = plan(_args("--address", "127.0.0.1:6379", "--min-nodes", "1", "--", "x"),
                start_parser(), {**env, "SLURMD_NODENAME": "n1", "ARAY_TOKEN": "secret"})
    assert head.head and head.min_nodes == 1 and head.token == "secret"
    assert head.token_file is None
    with pytest.raises(ValueError, match="not both"):
        plan(_args("--address", "127.0.0.1:6379", "--token", "a", "--token-file", "f", "--",
                   "x"), start_parser(), env)
    with pytest.raises(ValueError, match="no entrypoint"):
        plan(_args("--address", "127.0.0.1:6379"), start_parser(), env)
    # the first node must own the address it listens on
    with pytest.raises(ValueError, match="is not one of its addresses"):
        plan(_args("--address", "192.0.2.1:6379", "--", "x"), start_parser(),
             {**env, "SLURMD_NODENAME": "n1"})


def test_roles_outside_slurm():
    assert is_head({}, "10.0.0.5", 2, local={"127.0.0.1", "10.0.0.5"})
    assert not is_head({}, "10.0.0.5", 2, local={"127.0.0.1", "10.0.0.6"})
    # loopback makes every machine the head: not when several nodes are awaited
    assert not is_head({}, "127.0.0.1", 2, local={"127.0.0.1"})
    assert is_head({}, "127.0.0.1", 1, local={"127.0.0.1"})
    assert default_token_file({}) is None


def test_module_examples():
    result = doctest.testmod(_slurm, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 15


def test_symmetric_run_without_slurm_runs_the_entrypoint_on_one_node(tmp_path):
    """Outside Slurm, on one machine: the head, the entrypoint (its exit code), the end."""
    root = tempfile.mkdtemp(prefix="aray-sr-")
    watch_root(root)
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent("""
        import os, sys, aray
        aray.init()
        print("ADDRESS", os.environ["ARAY_ADDRESS"], len(aray.nodes()), flush=True)
        sys.exit(5)
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env.update(ARAY_SESSION_ROOT=root, ARAY_TOKEN="t0ken")
    proc = subprocess.run(
        [sys.executable, "-m", "aray", "symmetric-run", "--address", f"127.0.0.1:{_free_port()}",
         "--num-cpus", "1", "--include-dashboard", "false", "--", sys.executable, str(script)],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "ADDRESS 127.0.0.1:" in proc.stdout and " 1\n" in proc.stdout
    assert "exited with code 5" in proc.stderr
    _assert_sessions_clean(root)
    shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_sessions_clean(root: str) -> None:
    """No node of ``root``'s sessions runs, and none left its store in /dev/shm."""
    sessions = [os.path.join(root, n) for n in os.listdir(root) if n.startswith("session_2")]
    assert sessions
    for session in sessions:
        assert not os.path.exists(os.path.join(session, "cluster.json")), session
        assert not os.path.exists(store_dir_for(session)), store_dir_for(session)


# --- a real Slurm ------------------------------------------------------------------------


class SlurmUnavailable(Exception):
    """Slurm or munge cannot run here: the tests that need them are skipped."""


class SlurmCluster:
    """slurmctld, a slurmd per node of :data:`NODES` and munged, configured in ``base`` and
    run in a network namespace of their own; every process started and ended by pid."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: dict[str, subprocess.Popen] = {}
        self.holder: subprocess.Popen | None = None
        self.netns = ""
        self.conf = base / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SBIN}

    def tool(self, name: str) -> str:
        path = shutil.which(name, path=SBIN)
        if path is None:
            raise SlurmUnavailable(f"{name} is not installed")
        return path

    def in_netns(self, argv: list[str]) -> list[str]:
        return [self.tool("nsenter"), f"--net={self.netns}", *argv]

    def run(self, argv: list[str], env: dict | None = None, timeout: float = 60,
            **kwargs) -> subprocess.CompletedProcess:
        """A Slurm command (sbatch, squeue...) in the cluster's network namespace."""
        return subprocess.run(self.in_netns([self.tool(argv[0]), *argv[1:]]),
                              capture_output=True, text=True, timeout=timeout,
                              env=env or self.env, **kwargs)

    def start(self) -> None:
        for name in TOOLS:
            self.tool(name)
        self._start_netns()
        self._start_munge()
        self._write_conf()
        for name in NODES:
            (self.base / f"spool-{name}").mkdir()
        self._spawn("slurmctld", self.in_netns([self.tool("slurmctld"), "-D", "-f",
                                                str(self.conf)]))
        for name in NODES:
            self._spawn(f"slurmd-{name}", self.in_netns([self.tool("slurmd"), "-D", "-N", name,
                                                         "-f", str(self.conf)]))
        try:
            wait_until(self._all_idle, timeout=60, interval=0.3,
                       message="the Slurm nodes to be idle")
        except AssertionError as exc:
            raise SlurmUnavailable(f"Slurm did not start: {exc}\n{self.logs()}") from None

    def _start_netns(self) -> None:
        # `unshare --net cat` holds a network namespace for as long as its stdin is open
        try:
            self.holder = subprocess.Popen([self.tool("unshare"), "--net", "--", "cat"],
                                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE)
        except OSError as exc:
            raise SlurmUnavailable(f"cannot make a network namespace: {exc}") from None
        own = os.readlink("/proc/self/ns/net")
        path = f"/proc/{self.holder.pid}/ns/net"

        def entered():
            if self.holder is None or self.holder.poll() is not None:
                return "gone"
            try:
                return "in" if os.readlink(path) != own else ""
            except OSError:
                return ""

        try:
            state = wait_until(entered, timeout=10, message="unshare's network namespace")
        except AssertionError as exc:
            raise SlurmUnavailable(str(exc)) from None
        if state == "gone":
            assert self.holder is not None
            raise SlurmUnavailable("cannot make a network namespace (unshare --net): "
                                   + self.holder.stderr.read().decode()[-500:])
        self.netns = path
        # loopback up, and a second loopback address: Slurm resolves with AI_ADDRCONFIG,
        # which finds no IPv4 address at all while 127.0.0.1 is the only one
        for argv in (["link", "set", "lo", "up"], ["addr", "add", "127.0.0.2/8", "dev", "lo"]):
            up = subprocess.run(self.in_netns([self.tool("ip"), *argv]), capture_output=True,
                                text=True, timeout=30)
            if up.returncode != 0:
                raise SlurmUnavailable(f"cannot set up loopback in the namespace (ip "
                                       f"{' '.join(argv)}): {up.stderr}")

    def _start_munge(self) -> None:
        keys, run = self.base / "munge", self.base / "run"
        keys.mkdir(mode=0o700)
        run.mkdir(mode=0o755)
        run.chmod(0o755)
        key = subprocess.run([self.tool("mungekey"), "-c", "-k", str(keys / "munge.key")],
                             capture_output=True, text=True, timeout=30)
        if key.returncode != 0:
            raise SlurmUnavailable(f"mungekey failed: {key.stderr}")
        self.socket = run / "munge.sock"
        # --force: as root, and with its files in a temporary directory
        self._spawn("munged", [self.tool("munged"), "--foreground", "--force",
                               f"--key-file={keys / 'munge.key'}", f"--socket={self.socket}",
                               f"--pid-file={run / 'munged.pid'}",
                               f"--seed-file={keys / 'munged.seed'}",
                               f"--log-file={keys / 'munged.log'}"])
        try:
            wait_until(lambda: self.socket.exists() or self.procs["munged"].poll() is not None,
                       timeout=20, message="munged's socket")
        except AssertionError as exc:
            raise SlurmUnavailable(str(exc)) from None
        if not self.socket.exists():
            raise SlurmUnavailable(f"munged did not start:\n{self.logs()}")

    def _write_conf(self) -> None:
        b = self.base
        nodes = "\n".join(
            f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={16821 + i} "
            "CPUs=1 RealMemory=1024 State=UNKNOWN" for i, name in enumerate(NODES))
        self.conf.write_text(textwrap.dedent(f"""\
            ClusterName=aratest
            SlurmctldHost=localhost
            SlurmctldPort=16817
            SlurmdPort=16818
            SlurmUser=root
            SlurmdUser=root
            AuthType=auth/munge
            AuthInfo=socket={self.socket}
            CredType=cred/munge
            StateSaveLocation={b / 'state'}
            SlurmdSpoolDir={b}/spool-%n
            SlurmctldPidFile={b / 'slurmctld.pid'}
            SlurmdPidFile={b}/slurmd-%n.pid
            SlurmctldLogFile={b / 'slurmctld.log'}
            SlurmdLogFile={b}/slurmd-%n.log
            ProctrackType=proctrack/linuxproc
            TaskPlugin=task/none
            SelectType=select/cons_tres
            SelectTypeParameters=CR_Core_Memory
            SlurmdParameters=config_overrides
            JobAcctGatherType=jobacct_gather/none
            AccountingStorageType=accounting_storage/none
            MpiDefault=none
            MailProg=/bin/true
            ReturnToService=2
            KillWait=30
            """) + nodes + f"\nPartitionName=debug Nodes={','.join(NODES)} Default=YES "
            "MaxTime=INFINITE State=UP\n")
        (b / "state").mkdir()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.base / f"{name}.out", "wb")  # noqa: SIM115 (the process writes it)
        try:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, env=self.env)
        finally:
            log.close()

    def _all_idle(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with code {proc.returncode}:\n"
                                       + self.logs())
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        return all(states.get(name) == "idle" for name in NODES)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.base.glob("*.out")) + sorted(self.base.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM to each daemon by pid (SIGKILL after 20 s), then the namespace's holder."""
        for name in [f"slurmd-{n}" for n in NODES] + ["slurmctld", "munged"]:
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.holder is not None:
            assert self.holder.stdin is not None and self.holder.stderr is not None
            self.holder.stdin.close()
            self.holder.wait(10)
            self.holder.stderr.close()
            self.holder = None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running two-node Slurm cluster (see :class:`SlurmCluster`), or a skip that says
    why there is none."""
    if os.geteuid() != 0:
        pytest.skip("the test's Slurm runs its daemons as root (SlurmUser=root)")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        cluster.stop()
        pytest.skip(f"no Slurm to test on: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def job_env(slurm):
    """The environment jobs are submitted with (sbatch and srun hand it to the tasks): a
    session root of the test's own, aray's virtual environment first on PATH."""
    root = tempfile.mkdtemp(prefix="aray-sl-")
    watch_root(root)
    env = {**slurm.env, "ARAY_SESSION_ROOT": root, "ARAY_HEAD_ADDRESS": HEAD,
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), SBIN]),
           "PYTHONUNBUFFERED": "1"}
    env.pop("ARAY_TOKEN", None)
    yield env
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("text", ["node[01-03,07],gpu5", "r[1-2]-n[8-10]", "n[098-101]"])
def test_expand_hostlist_agrees_with_scontrol(slurm, text):
    out = slurm.run(["scontrol", "show", "hostnames", text]).stdout.split()
    assert out and expand_hostlist(text) == out
    # with scontrol on PATH or without it, the same answer
    assert allocation_hosts({"SLURM_JOB_NODELIST": text, **slurm.env}) == out
    assert allocation_hosts({"SLURM_JOB_NODELIST": text, "PATH": ""}) == out


@pytest.mark.timeout(300)
def test_sbatch_template_runs_train_py_across_the_nodes(slurm, job_env, tmp_path):
    out = tmp_path / "job.out"
    proc = slurm.run(["sbatch", "--wait", "--cpus-per-task=1", "--mem=400M",
                      f"--output={out}", f"--chdir={TEMPLATE.parent}", str(TEMPLATE)],
                     env=job_env, timeout=240)
    text = out.read_text() if out.exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + text + slurm.logs()
    assert "nodes: 2 " in text, text
    assert "shards: 8 on 2 nodes, total " in text, text
    assert "2 of 2 nodes joined" in text and "exited with code 0" in text, text
    _assert_sessions_clean(job_env["ARAY_SESSION_ROOT"])


@pytest.mark.timeout(300)
def test_the_programs_exit_code_is_the_jobs(slurm, job_env, tmp_path):
    out = tmp_path / "job.out"
    proc = slurm.run(["sbatch", "--wait", "--parsable", "--cpus-per-task=1", "--mem=300M",
                      f"--output={out}", f"--chdir={tmp_path}", str(TEMPLATE), "python", "-c",
                      "import aray, sys; aray.init(); sys.exit(7)"], env=job_env, timeout=240)
    text = out.read_text() if out.exists() else ""
    assert proc.returncode == 7, proc.stdout + proc.stderr + text
    job = proc.stdout.strip().split(";")[0]
    shown = slurm.run(["scontrol", "show", "job", "-o", job]).stdout
    assert "ExitCode=7:0" in shown, shown  # (finished jobs stay listed for MinJobAge, 300 s)
    assert "the entrypoint exited with code 7" in text, text
    _assert_sessions_clean(job_env["ARAY_SESSION_ROOT"])


ENTRY = """
import json, os, sys, aray
aray.init()
nodes = sorted((n for n in aray.nodes() if n["Alive"]), key=lambda n: n["NodeID"])
print("RESOURCES", json.dumps([n["Resources"] for n in nodes]), flush=True)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.timeout(300)
def test_srun_exit_code_resources_and_token_file(slurm, job_env, tmp_path):
    """srun without sbatch, the token in a file the head writes: the entrypoint's exit code
    is srun's; each node offers the allocation's CPU and memory."""
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    token_file = tmp_path / "secret" / "token"
    proc = slurm.run(["srun", "--nodes=2", "--ntasks-per-node=1", "--mem=300M",
                      "aray", "symmetric-run", "--address", HEAD, "--token-file",
                      str(token_file), "--include-dashboard", "false", "--",
                      "python", str(script), "3"], env=job_env, timeout=240)
    assert proc.returncode == 3, proc.stdout + proc.stderr + slurm.logs()
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESOURCES "))
    resources = json.loads(line.split(" ", 1)[1])
    assert len(resources) == 2, resources
    from aray.aio import _shm_free_bytes

    memory, store = memory_split(300 * 2**20, None, _shm_free_bytes() or 300 * 2**20)
    for node in resources:
        assert node["CPU"] == 1.0 and "GPU" not in node
        assert node["memory"] == memory and node["object_store_memory"] == store
    assert "exited with code 3" in proc.stderr
    assert not token_file.exists()  # the head removes what it wrote
    assert oct(token_file.parent.stat().st_mode & 0o777) == "0o700"
    _assert_sessions_clean(job_env["ARAY_SESSION_ROOT"])


HOLD = """
import json, os, sys, time, aray
from aray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
aray.init()

@aray.remote(num_cpus=1)
def pid():
    return os.getpid()

nodes = [n["NodeID"] for n in aray.nodes() if n["Alive"]]
pids = aray.get([pid.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                 .remote() for n in nodes])
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"entrypoint": os.getpid(), "workers": pids, "nodes": len(nodes)}, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


def _session_processes(root: str) -> set[int]:
    """Every process that runs for the session root ``root``: those whose environment names
    it (symmetric-run, aray start, the nodes, their workers, the entrypoint), the node
    processes its sessions' cluster.json files record, and their descendants."""
    pids = set()
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("ARAY_SESSION_ROOT") == root:
                pids.add(proc.pid)
        except psutil.Error:
            pass
    for node in _node_pids(root):
        pids.add(node)
        try:
            pids.update(p.pid for p in psutil.Process(node).children(recursive=True))
        except psutil.Error:
            pass
    return pids


def _node_pids(root: str) -> list[int]:
    """The node processes that the cluster.json files of ``root``'s sessions record."""
    pids = []
    for name in os.listdir(root):
        if os.path.islink(os.path.join(root, name)):  # session_latest: one of the others
            continue
        try:
            with open(os.path.join(root, name, "cluster.json")) as f:
                pids.append(int(json.load(f)["pid"]))
        except (OSError, ValueError, KeyError):
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(300)
def test_scancel_tears_everything_down(slurm, job_env, tmp_path):
    root = job_env["ARAY_SESSION_ROOT"]
    script, ready, out = tmp_path / "hold.py", tmp_path / "ready.json", tmp_path / "job.out"
    script.write_text(HOLD)
    submitted = slurm.run(["sbatch", "--parsable", "--cpus-per-task=1", "--mem=300M",
                           f"--output={out}", f"--chdir={tmp_path}", str(TEMPLATE),
                           "python", "-u", str(script), str(ready)], env=job_env)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]

    def job_state():
        return slurm.run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip()

    try:
        wait_until(lambda: ready.exists() or job_state() == "", timeout=180, interval=0.2,
                   message="the entrypoint to report its workers")
        assert ready.exists(), (out.read_text() if out.exists() else "") + slurm.logs()
        info = json.loads(ready.read_text())
        assert info["nodes"] == 2
        pids = _session_processes(root) | {info["entrypoint"], *info["workers"]}
        nodes = _node_pids(root)
        assert len(nodes) == 2 and set(nodes) <= pids
        assert all(_alive(p) for p in [info["entrypoint"], *info["workers"], *nodes])
    finally:
        cancel = slurm.run(["scancel", job])
    assert cancel.returncode == 0, cancel.stderr
    wait_until(lambda: job_state() == "", timeout=90, interval=0.2, message="the job to end")
    wait_until(lambda: not [p for p in pids if _alive(p)], timeout=60, interval=0.2,
               message="every process of the job to exit")
    assert not _session_processes(root) - pids, "processes that started after the scancel"
    text = out.read_text()
    assert "stopping the entrypoint, then the cluster" in text, text
    _assert_sessions_clean(root)
