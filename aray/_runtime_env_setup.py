"""A worker sets up its runtime env before user code runs (see :mod:`aray._runtime_env`).

In order: ``env_vars`` into ``os.environ``; each ``py_modules`` package unpacked (once per
node, in the node's cache) and put on ``sys.path``; the ``pip`` requirements installed,
once per node and distinct set, into a virtual environment made from the node's
interpreter with ``--system-site-packages`` (so aray and what the node has stay), whose
``site-packages`` goes first on ``sys.path``; the ``working_dir`` package unpacked, made the
current directory and first on ``sys.path``. Anything that fails raises
:class:`~aray.exceptions.RuntimeEnvSetupError` naming the field and the cause.

Runs on a thread of its own (it waits on downloads and pip); ``fetch(name)`` returns a
package's bytes from the head.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable

from ._packages import PackageCache
from ._runtime_env import PACKAGE_SCHEME, setup_timeout
from .exceptions import RuntimeEnvSetupError

#: unpacked packages and pip environments kept per node beyond those in use
CACHE_ENTRIES = int(os.environ.get("ARAY_RUNTIME_ENV_CACHE_ENTRIES", "10"))


def setup(wire: dict, cache_root: str, fetch: Callable[[str], bytes]) -> None:
    """Make this process run in ``wire`` (a runtime env's wire form).

    Example:
        >>> import os, tempfile
        >>> setup({"env_vars": {"ARAY_DOC_MODE": "on"}}, tempfile.mkdtemp(), None)
        >>> os.environ["ARAY_DOC_MODE"]
        'on'
    """
    deadline = setup_timeout(wire)
    started = time.monotonic()
    cache = PackageCache(os.path.join(cache_root, "packages"), keep=CACHE_ENTRIES)
    os.environ.update(wire.get("env_vars", {}))
    for uri in wire.get("py_modules", []):
        folder = _package(cache, uri, "py_modules", fetch)
        sys.path.insert(0, folder)
    if wire.get("pip"):
        remaining = None if deadline is None else deadline - (time.monotonic() - started)
        folder = pip_environment(wire["pip"]["packages"], os.path.join(cache_root, "pip"),
                                 remaining, deadline)
        before = list(sys.path)
        site.addsitedir(folder)  # (its .pth files too)
        sys.path[:] = [p for p in sys.path if p not in before] + before
    if wire.get("working_dir"):
        folder = _package(cache, wire["working_dir"], "working_dir", fetch)
        os.chdir(folder)
        sys.path.insert(0, folder)


def _package(cache: PackageCache, uri: str, field: str, fetch: Callable[[str], bytes]) -> str:
    if not uri.startswith(PACKAGE_SCHEME):
        raise RuntimeEnvSetupError(f"runtime_env {field} {uri!r} was not uploaded")
    name = uri[len(PACKAGE_SCHEME):]
    try:
        return cache.get(name, fetch)
    except RuntimeEnvSetupError:
        raise
    except Exception as exc:
        raise RuntimeEnvSetupError(
            f"runtime_env {field}: the package {name} could not be fetched or unpacked: "
            f"{type(exc).__name__}: {exc}") from exc


def pip_environment(packages: list[str], root: str, timeout: float | None,
                    configured: float | None = None) -> str:
    """The ``site-packages`` folder of a virtual environment with ``packages`` installed,
    made once per node and distinct list (a file lock keeps two workers from both
    building it); raises RuntimeEnvSetupError with pip's own words when it fails."""
    digest = hashlib.blake2b(json.dumps(packages).encode(), digest_size=8).hexdigest()
    # (the environment is built in a folder then moved into place: its scripts name their
    # own path, but only its site-packages is used here, so moving it is safe)
    folder = PackageCache(root, keep=CACHE_ENTRIES).entry(
        f"pip_{digest}", lambda partial: _build(partial, packages, timeout,
                                                configured or timeout))
    return _site_packages(folder)


def _site_packages(venv: str) -> str:
    # (the layout of a virtual environment on POSIX: what venv makes)
    return sysconfig.get_path("purelib", "posix_prefix", vars={"base": venv, "platbase": venv})


def _build(venv: str, packages: list[str], timeout: float | None,
           configured: float | None) -> None:
    started = time.monotonic()

    def run(args: list[str], what: str) -> None:
        left = None if timeout is None else max(1.0, timeout - (time.monotonic() - started))
        # a session of its own: pip runs itself again under the environment's interpreter,
        # and a timeout must end both
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise RuntimeEnvSetupError(
                f"runtime_env pip: {what} took longer than setup_timeout_seconds="
                f"{configured:g} (raise it in runtime_env={{'config': ...}})") from None
        except BaseException:
            _kill_group(proc)
            raise
        if proc.returncode != 0:
            raise RuntimeEnvSetupError(
                f"runtime_env pip: {what} failed (exit code {proc.returncode}):\n"
                + (err or out).strip()[-3000:])

    # no pip of its own (it would take seconds to install): this interpreter's pip
    # installs into it (pip's --python)
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
        "creating the virtual environment")
    # what this interpreter's environment has (aray among it) counts as installed there
    # too, when the node runs from a virtual environment of its own
    with open(os.path.join(_site_packages(venv), "_aray_node_env.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    python = os.path.join(venv, "bin", "python")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
         "--disable-pip-version-check", *packages], f"pip install {' '.join(packages)}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # all of it has exited already
    proc.communicate()
