"""Objects moving between nodes: bandwidth against a plain socket copy, and many readers.

    python benchmarks/bench_transfer.py [--mib 1024] [--readers 8] [--quick] [--json PATH]

Starts a 2-node cluster on loopback in a session root of its own (`aray start --head`, then
`aray start --address ...` for a second node that offers the resource ``there``), and from
a driver on the head node:

* plain socket copy: the same number of bytes sent over a loopback TCP socket from one
  process to another (``sendall`` from a buffer, ``recv_into`` a preallocated one): the
  bound for a transfer on this machine;
* transfer: a fresh array ``put`` on the head node, read by one task on the second node
  (the task only touches the array's length, so the time is the transfer), minus an empty
  task's round trip; GB/s and the ratio to the socket copy;
* many readers: ``--readers`` tasks on the second node read one fresh array at the same
  time; the node fetches it once, so this takes about as long as one reader.

Every figure is the best of 3 rounds. ``--quick``: 128 MiB and 4 readers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from compare import cpu_model  # benchmarks/ is on sys.path when this script runs

import aray

CHUNK = 4 * 2**20


def _send(port: int, nbytes: int) -> None:
    data = memoryview(bytearray(os.urandom(CHUNK)))
    with socket.create_connection(("127.0.0.1", port)) as s:
        left = nbytes
        while left > 0:
            s.sendall(data[: min(CHUNK, left)])
            left -= CHUNK


def socket_copy(nbytes: int) -> float:
    """Seconds to move ``nbytes`` from another process over loopback TCP."""
    buf = memoryview(bytearray(CHUNK))
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        sender = multiprocessing.get_context("spawn").Process(target=_send, args=(port, nbytes))
        sender.start()
        conn, _ = server.accept()
        with conn:
            start = time.perf_counter()
            got = 0
            while got < nbytes:
                n = conn.recv_into(buf)
                if not n:
                    break
                got += n
            took = time.perf_counter() - start
        sender.join()
    if got != nbytes:
        raise RuntimeError(f"the socket copy moved {got} of {nbytes} bytes")
    return took


def best_of(n: int, fn) -> float:
    return min(fn() for _ in range(n))


def cli(env: dict, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "aray", *args], capture_output=True, text=True,
                          timeout=120, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"aray {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="object size in MiB")
    parser.add_argument("--readers", type=int, default=8, help="tasks reading one object")
    parser.add_argument("--quick", action="store_true", help="128 MiB and 4 readers")
    parser.add_argument("--json", metavar="PATH", help="write the figures to PATH")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.readers = 128, 4
    nbytes = args.mib * 2**20
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}")
    figures: dict = {"mib": args.mib, "readers": args.readers}

    copy = best_of(3, lambda: socket_copy(nbytes))
    figures["socket_gb_s"] = nbytes / copy / 1e9
    print(f"plain socket copy, {args.mib} MiB  {figures['socket_gb_s']:6.2f} GB/s")

    root = tempfile.mkdtemp(prefix="aray-bench-transfer-")
    env = {**os.environ, "ARAY_SESSION_ROOT": root}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    os.environ["ARAY_SESSION_ROOT"] = root
    try:
        cli(env, "start", "--head", "--port", str(port), "--num-cpus", "1")
        cli(env, "start", "--address", address, "--num-cpus", "2",
            "--resources", json.dumps({"there": args.readers}))
        aray.init(address=address)

        @aray.remote(resources={"there": 1})
        def length(a):
            return 0 if a is None else len(a)

        aray.get(length.remote(None))  # a worker on the second node is up

        def empty() -> float:
            start = time.perf_counter()
            aray.get(length.remote(None))
            return time.perf_counter() - start

        def one_transfer() -> float:
            ref = aray.put(np.ones(nbytes // 8))
            start = time.perf_counter()
            assert aray.get(length.remote(ref)) == nbytes // 8
            return time.perf_counter() - start

        def many_readers() -> float:
            ref = aray.put(np.ones(nbytes // 8))
            start = time.perf_counter()
            assert aray.get([length.remote(ref) for _ in range(args.readers)]) == [
                nbytes // 8] * args.readers
            return time.perf_counter() - start

        round_trip = best_of(5, empty)
        one = best_of(3, one_transfer)
        many = best_of(3, many_readers)
        figures["transfer_gb_s"] = nbytes / max(one - round_trip, 1e-9) / 1e9
        figures["transfer_vs_socket"] = figures["transfer_gb_s"] / figures["socket_gb_s"]
        figures["one_reader_s"], figures["many_readers_s"] = one, many
        print(f"transfer between nodes     {figures['transfer_gb_s']:6.2f} GB/s  "
              f"({figures['transfer_vs_socket']:.2f}x the socket copy; empty task "
              f"{round_trip * 1e3:.1f} ms)")
        print(f"{args.readers} readers of one object   {many:6.2f} s  "
              f"(one reader {one:.2f} s: {many / one:.2f}x)")
    finally:
        aray.shutdown()
        cli(env, "stop")
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
