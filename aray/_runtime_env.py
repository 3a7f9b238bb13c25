"""Runtime environments (``runtime_env``): what a worker sets up before user code runs.

Ray's fields, with Ray's meaning: ``working_dir`` (a folder or a ``.zip``: the worker's
current directory and first entry of ``sys.path``), ``py_modules`` (folders, ``.zip`` or
``.whl`` files: importable in the worker), ``env_vars``, ``excludes`` (gitignore-style
patterns left out of the packages), ``pip`` (requirements installed once per node into a
cached virtual environment) and ``config`` (``setup_timeout_seconds``, ``eager_install``).

The submitting side checks an env (:func:`check`), merges it with its parent's
(:func:`merge`), and packs its folders into content-addressed zip files
(:mod:`aray._packages`) that it uploads to the head once; what travels with tasks is the
*wire form*: the same dict with each local path replaced by a package URI
(``aray-pkg://NAME``). The worker side (:mod:`aray._runtime_env_setup`) turns the wire form
into a working process.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

#: the fields aray sets up
FIELDS = ("working_dir", "py_modules", "env_vars", "excludes", "pip", "config")
#: Ray's fields aray does not set up yet: refused with what to do instead
NOT_YET = {
    "conda": "create the environment on every node and start `aray start` from it, or use pip",
    "uv": "use pip: aray installs its requirements into a cached virtual environment",
    "container": "run aray inside the image instead (see docs/cluster.md)",
    "image_uri": "run aray inside the image instead (see docs/cluster.md)",
    "py_executable": "start `aray start` with the interpreter you want",
    "java_jars": "aray runs Python only",
    "nsight": "profile the worker with the tool directly",
    "worker_process_setup_hook": "run the setup at the top of the task or actor constructor",
}
#: Ray's default for ``config.setup_timeout_seconds``
DEFAULT_SETUP_TIMEOUT = 600.0
#: where an uploaded package is named: what a wire-form env carries instead of a path
PACKAGE_SCHEME = "aray-pkg://"


class RuntimeEnv(dict):
    """A runtime environment, as Ray's ``ray.runtime_env.RuntimeEnv``: a dict of its
    fields, checked when it is made.

    Example:
        >>> env = RuntimeEnv(env_vars={"MODE": "fast"}, pip=["requests"])
        >>> env["env_vars"], env.get("pip")
        ({'MODE': 'fast'}, {'packages': ['requests']})
        >>> RuntimeEnv(conda="env")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: runtime_env field 'conda' is not supported by aray yet: ...
    """

    def __init__(self, **fields: Any) -> None:
        super().__init__(check({k: v for k, v in fields.items() if v is not None}))


def check(env: Any, where: str = "runtime_env") -> dict:
    """``env`` checked and in its plain form (``{}`` for None); raises TypeError or
    ValueError naming the field and what it takes.

    Example:
        >>> check({"env_vars": {"A": "1"}, "pip": "requirements.txt"}, "f.options()")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: f.options(): runtime_env pip: the requirements file requirements.txt ...
        >>> check({"env_vars": {"A": 1}})
        Traceback (most recent call last):
        ...
        TypeError: runtime_env env_vars: values must be strings, got A=1 (of type int)
    """
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise TypeError(f"{where}: runtime_env must be a dict (or aray.runtime_env.RuntimeEnv), "
                        f"got {type(env).__name__}")
    out: dict = {}
    for key, value in env.items():
        if key in NOT_YET:
            raise ValueError(f"runtime_env field {key!r} is not supported by aray yet: "
                             f"{NOT_YET[key]}")
        if key not in FIELDS:
            raise ValueError(f"{where}: unknown runtime_env field {key!r}; the fields are "
                             f"{', '.join(FIELDS)}")
        if value is None:
            continue
        out[key] = _CHECKS[key](value, where)
    return out


def _path(value: Any, field: str, where: str, kinds: tuple[str, ...]) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"runtime_env {field}: expected a path, got {type(value).__name__}")
    text = os.fspath(value)
    if text.startswith(PACKAGE_SCHEME):
        return text  # uploaded already (a wire form passed on)
    if "://" in text:
        raise ValueError(f"{where}: runtime_env {field} {text!r}: remote URIs are not supported "
                         "yet; give a local folder or file, which aray uploads")
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(path) or (os.path.isfile(path) and path.endswith(kinds)):
        return path
    if not os.path.exists(path):
        raise ValueError(f"{where}: runtime_env {field} {text!r} does not exist")
    raise ValueError(f"{where}: runtime_env {field} {text!r} must be a folder or a "
                     f"{' or '.join(kinds)} file")


def _check_working_dir(value: Any, where: str) -> str:
    return _path(value, "working_dir", where, (".zip",))


def _check_py_modules(value: Any, where: str) -> list:
    if isinstance(value, (str, os.PathLike)) or not isinstance(value, (list, tuple)):
        raise TypeError("runtime_env py_modules: expected a list of folders or .zip/.whl "
                        f"files, got {type(value).__name__}")
    return [_path(v, "py_modules", where, (".zip", ".whl")) for v in value]


def _check_env_vars(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"runtime_env env_vars: expected a dict, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"runtime_env env_vars: values must be strings, got {k}={v!r} "
                            f"(of type {type(v).__name__})")
    return dict(value)


def _check_excludes(value: Any, where: str) -> list:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) for v in value):
        raise TypeError("runtime_env excludes: expected a list of patterns (strings)")
    return list(value)


def _check_pip(value: Any, where: str) -> dict:
    if isinstance(value, dict):
        packages = value.get("packages")
        extra = set(value) - {"packages", "pip_check", "pip_version"}
        if extra:
            raise ValueError(f"{where}: runtime_env pip: unknown keys {sorted(extra)}")
    else:
        packages = value
    if isinstance(packages, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(packages))
        if not os.path.isfile(path):
            raise ValueError(f"{where}: runtime_env pip: the requirements file {packages} "
                             "does not exist (give a list of requirements, or a file's path)")
        with open(path) as f:
            packages = [line.strip() for line in f
                        if line.strip() and not line.lstrip().startswith("#")]
    if not isinstance(packages, (list, tuple)) or not all(isinstance(p, str) for p in packages):
        raise TypeError("runtime_env pip: expected a list of requirements, a requirements "
                        "file, or {'packages': [...]}")
    # a requirement that names a local file (a wheel) is made absolute: it is read on the
    # node, by a pip that runs elsewhere
    return {"packages": [os.path.abspath(p) if os.path.exists(p) else p for p in packages]}


def _check_config(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"runtime_env config: expected a dict, got {type(value).__name__}")
    extra = set(value) - {"setup_timeout_seconds", "eager_install"}
    if extra:
        raise ValueError(f"{where}: runtime_env config: unknown keys {sorted(extra)}; the keys "
                         "are setup_timeout_seconds and eager_install")
    out = dict(value)
    timeout = out.get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or (
            timeout <= 0 and timeout != -1):
        raise ValueError("runtime_env config setup_timeout_seconds must be a positive number "
                         "of seconds (or -1: no limit)")
    if not isinstance(out.get("eager_install", True), bool):
        raise TypeError("runtime_env config eager_install must be True or False")
    return out


_CHECKS = {"working_dir": _check_working_dir, "py_modules": _check_py_modules,
           "env_vars": _check_env_vars, "excludes": _check_excludes, "pip": _check_pip,
           "config": _check_config}


def merge(parent: dict, child: dict) -> dict:
    """A child's env over its parent's (the job's, or the submitting task's), as in Ray:
    each field the child gives replaces the parent's, except ``env_vars``, merged.

    Example:
        >>> merge({"env_vars": {"A": "1"}, "pip": {"packages": ["x"]}},
        ...       {"env_vars": {"B": "2"}, "working_dir": "/w"})
        {'env_vars': {'A': '1', 'B': '2'}, 'pip': {'packages': ['x']}, 'working_dir': '/w'}
    """
    if not parent:
        return child
    if not child:
        return parent
    out = {**parent, **child}
    if "env_vars" in parent and "env_vars" in child:
        out["env_vars"] = {**parent["env_vars"], **child["env_vars"]}
    return out


def env_key(wire: dict) -> str:
    """A short name of a wire-form env: workers are pooled per distinct env ("" for none).

    Example:
        >>> env_key({}), len(env_key({"env_vars": {"A": "1"}}))
        ('', 12)
    """
    if not wire:
        return ""
    text = json.dumps(wire, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def setup_timeout(wire: dict) -> float | None:
    """How long a worker may take to set ``wire`` up (None: no limit).

    Example:
        >>> setup_timeout({}), setup_timeout({"config": {"setup_timeout_seconds": -1}})
        (600.0, None)
    """
    timeout = float(wire.get("config", {}).get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT))
    return None if timeout == -1 else timeout


def describe(wire: dict) -> str:
    """An env for an error message: its fields, with package names shortened.

    Example:
        >>> describe({"env_vars": {"A": "1"}, "working_dir": "aray-pkg://wd_abc.zip"})
        "{'env_vars': {'A': '1'}, 'working_dir': 'aray-pkg://wd_abc.zip'}"
    """
    return repr(wire)
