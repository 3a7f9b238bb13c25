"""``runtime_env``: env vars, code that travels (working_dir, py_modules), pip
environments, pooling per env, and setup failures that fail clearly instead of hanging."""

import base64
import hashlib
import json
import os
import socket
import threading
import zipfile

import pytest
from test_cluster import Cluster

import aray
from aray._runtime_env import check


def out_of(result) -> object:
    return json.loads(result.stdout.split("OUT ", 1)[1].splitlines()[0])


def make_wheel(folder, name="tinywheel", version="1.0", body="ANSWER = 42\n") -> str:
    """A wheel built by hand: a module, its dist-info, and the RECORD pip checks."""
    files = {f"{name}.py": body.encode(),
             f"{name}-{version}.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for name_, data in files.items():
            archive.writestr(name_, data)
    return path


def test_bad_envs_are_refused_where_they_are_given(tmp_path):
    with pytest.raises(ValueError, match="runtime_env working_dir .*does not exist"):
        aray.remote(lambda: 1).options(runtime_env={"working_dir": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match="unknown runtime_env field 'working_directory'"):
        check({"working_directory": "."})
    with pytest.raises(ValueError, match="'conda' is not supported by aray yet"):
        check({"conda": "myenv"})
    with pytest.raises(TypeError, match="env_vars: values must be strings, got N=1"):
        check({"env_vars": {"N": 1}})
    with pytest.raises(TypeError, match="py_modules: expected a list"):
        check({"py_modules": str(tmp_path)})
    with pytest.raises(ValueError, match="setup_timeout_seconds must be a positive number"):
        check({"config": {"setup_timeout_seconds": 0}})
    (tmp_path / "reqs.txt").write_text("# a comment\nrequests>=2\n\n")
    assert check({"pip": str(tmp_path / "reqs.txt")}) == {"pip": {"packages": ["requests>=2"]}}
    assert aray.runtime_env.RuntimeEnv(env_vars={"A": "1"}) == {"env_vars": {"A": "1"}}


def test_env_vars_working_dir_and_excludes_with_pools_per_env(run_script, tmp_path):
    code = tmp_path / "code"
    (code / ".git").mkdir(parents=True)
    (code / ".git" / "config").write_text("[core]")
    (code / "build").mkdir()
    (code / "build" / "big.bin").write_bytes(b"x" * 1000)
    (code / "only_in_working_dir.py").write_text("WHERE = 'packed'\n")
    (code / "notes.txt").write_text("hello")
    (code / "secret.key").write_text("no")
    r = run_script(f"""
        aray.init(num_cpus=2, runtime_env={{"env_vars": {{"LEVEL": "job", "KEEP": "1"}}}})
        CODE = {str(code)!r}

        @aray.remote
        def look():
            import only_in_working_dir
            return [only_in_working_dir.WHERE, open("notes.txt").read(),
                    os.environ.get("LEVEL"), os.environ.get("KEEP"), sorted(os.listdir(".")),
                    os.getpid(), os.getcwd() != CODE]

        @aray.remote
        def plain():
            return [os.environ.get("LEVEL"), os.getpid()]

        env = {{"working_dir": CODE, "excludes": ["build/", "*.key"],
               "env_vars": {{"LEVEL": "task"}}}}
        first = aray.get(look.options(runtime_env=env).remote())
        again = aray.get(look.options(runtime_env=env).remote())
        other = aray.get(plain.remote())

        @aray.remote
        class Reader:
            def read(self):
                import only_in_working_dir
                return [only_in_working_dir.WHERE, os.environ.get("LEVEL")]

        reader = Reader.options(runtime_env={{"working_dir": CODE}}).remote()
        sys.stdout.write("OUT " + json.dumps([first, again, other,
                                              aray.get(reader.read.remote())]) + "\\n")
        report_pids()
    """)
    first, again, other, actor = out_of(r)
    assert first[:5] == ["packed", "hello", "task", "1", ["notes.txt", "only_in_working_dir.py"]]
    assert first[6]  # it ran in the node's copy, not in the folder itself
    assert again[5] == first[5]  # the same env: the same worker
    assert other == ["job", other[1]] and other[1] != first[5]  # another env: another worker
    assert actor == ["packed", "job"]
    r.assert_no_leftovers()


def test_py_modules_folders_and_wheels(run_script, tmp_path):
    package = tmp_path / "libs" / "mylib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("NAME = 'mylib'\n")
    wheel = make_wheel(str(tmp_path), "wheelmod", body="ANSWER = 7\n")
    r = run_script(f"""
        aray.init(num_cpus=1)

        @aray.remote(runtime_env={{"py_modules": [{str(package)!r}, {wheel!r}]}})
        def use():
            import mylib, wheelmod
            return [mylib.NAME, wheelmod.ANSWER]

        sys.stdout.write("OUT " + json.dumps(aray.get(use.remote())) + "\\n")
        report_pids()
    """)
    assert out_of(r) == ["mylib", 7]
    r.assert_no_leftovers()


def test_pip_installs_once_into_a_cached_environment(run_script, tmp_path):
    wheel = make_wheel(str(tmp_path))
    r = run_script(f"""
        from aray import _global
        aray.init(num_cpus=2)
        env = {{"pip": [{wheel!r}]}}

        @aray.remote
        def use(delay):
            import tinywheel, aray as inside
            time.sleep(delay)
            return [tinywheel.ANSWER, os.getpid(), inside.__file__ == {aray.__file__!r}]

        # two workers at once set the same env up: one builds it, the other waits
        results = aray.get([use.options(runtime_env=env).remote(0.5) for _ in range(2)])
        pip_root = os.path.join(_global.core().session_dir, "runtime_resources", "pip")
        envs = [e for e in os.listdir(pip_root) if e.startswith("pip_") and "." not in e]
        sys.stdout.write("OUT " + json.dumps([results, envs]) + "\\n")
        report_pids()
    """, timeout=120)
    results, envs = out_of(r)
    assert [x[0] for x in results] == [42, 42] and all(x[2] for x in results)
    assert len(envs) == 1  # built once, for both workers; aray itself is the node's
    r.assert_no_leftovers()


def _silent_server():
    """A TCP server that accepts connections and never answers (a hung package index)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    conns = []

    def accept():
        while True:
            try:
                conns.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, conns


def test_setup_failures_fail_the_task_with_runtime_env_setup_error(run_script, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "data.bin").write_bytes(os.urandom(200_000))
    server, conns = _silent_server()
    try:
        r = run_script(f"""
            os.environ["ARAY_RUNTIME_ENV_MAX_PACKAGE_BYTES"] = "100000"
            aray.init(num_cpus=1)

            @aray.remote
            def f():
                return "ran"

            @aray.remote
            class A:
                def ping(self):
                    return "pong"

            def outcome(ref):
                try:
                    return aray.get(ref, timeout=60)
                except aray.exceptions.RuntimeEnvSetupError as e:
                    return "setup: " + str(e)
                except aray.exceptions.ActorDiedError as e:
                    return "actor: " + str(e)

            cases = [
                f.options(runtime_env={{"pip": ["surely-no-such-package-aray==0.0.1"]}}).remote(),
                f.options(runtime_env={{"working_dir": {str(big)!r}}}).remote(),
                f.options(runtime_env={{"pip": ["--index-url", "http://127.0.0.1:{server.getsockname()[1]}/simple",
                                                "anything"],
                                        "config": {{"setup_timeout_seconds": 3}}}}).remote(),
                A.options(runtime_env={{"pip": ["surely-no-such-package-aray==0.0.1"]}}
                          ).remote().ping.remote(),
            ]
            out = [outcome(ref) for ref in cases]
            out.append(aray.get(f.remote()))  # and the cluster carries on
            sys.stdout.write("OUT " + json.dumps(out) + "\\n")
            report_pids()
        """, timeout=150)
    finally:
        server.close()
        for conn in conns:
            conn.close()
    pip_missing, too_big, hung, actor, fine = out_of(r)
    assert pip_missing.startswith("setup: runtime_env pip: pip install surely-no-such-package")
    assert "No matching distribution" in pip_missing or "Could not find" in pip_missing
    assert too_big.startswith("setup: ") and "larger than 100000 bytes" in too_big
    assert "excludes" in too_big
    assert hung.startswith("setup: ") and "setup_timeout_seconds=3" in hung, hung
    assert actor.startswith("actor: ") and "surely-no-such-package" in actor, actor
    assert fine == "ran"
    r.assert_no_leftovers()


@pytest.fixture(scope="module")
def two_nodes():
    c = Cluster()
    c.head = c.start_head("--num-cpus", "1")
    c.second = c.join("--num-cpus", "1", "--resources", '{"far": 1}')
    yield c
    c.stop()


def test_code_travels_to_another_node_and_to_clients(two_nodes, tmp_path):
    code = tmp_path / "travelling"
    code.mkdir()
    (code / "travelling_mod.py").write_text("def where():\n    return 'uploaded'\n")
    script_dir = tmp_path / "driver"
    script_dir.mkdir()
    r = two_nodes.driver(f"""
        import json, shutil
        aray.init(address={two_nodes.address!r},
                  runtime_env={{"working_dir": {str(code)!r}}})

        @aray.remote(resources={{"far": 1}})
        def far():
            import travelling_mod
            return [travelling_mod.where(), aray.get_runtime_context().get_node_id()]

        first = aray.get(far.remote())
        shutil.rmtree({str(code)!r})  # from now on it exists only as the uploaded package

        @aray.remote(resources={{"far": 1}}, max_calls=1)
        def again():
            import travelling_mod
            return travelling_mod.where()

        print("OUT " + json.dumps([first, aray.get(again.remote()), aray.get(again.remote())]))
    """, script_dir)
    first, second, third = out_of(r)
    assert first == ["uploaded", two_nodes.second["node_id"]]
    assert second == third == "uploaded"

    # a client (aray://) uploads the same way, and the head keeps one copy
    code.mkdir()
    (code / "travelling_mod.py").write_text("def where():\n    return 'from the client'\n")
    with open(os.path.join(two_nodes.root, "session_latest", "token")) as f:
        token = f.read().strip()
    r = two_nodes.driver(f"""
        import json
        aray.init(address="aray://{two_nodes.address}", token={token!r})

        @aray.remote(runtime_env={{"working_dir": {str(code)!r}}})
        def use():
            import travelling_mod
            return travelling_mod.where()

        print("OUT " + json.dumps([aray.get(use.remote()),
                                   aray.get(use.options(resources={{"far": 1}}).remote())]))
    """, script_dir)
    assert out_of(r) == ["from the client", "from the client"]


def test_a_jobs_env_is_set_up_at_init_unless_eager_install_is_off(run_script, tmp_path):
    wheel = make_wheel(str(tmp_path), "eagerwheel")
    r = run_script(f"""
        from aray import _global
        for eager in (True, False):
            aray.init(num_cpus=1, runtime_env={{"pip": [{wheel!r}],
                                               "config": {{"eager_install": eager}}}})
            pip_root = os.path.join(_global.core().session_dir, "runtime_resources", "pip")
            def built():
                return os.path.isdir(pip_root) and any(
                    e.startswith("pip_") and "." not in e for e in os.listdir(pip_root))
            deadline = time.time() + (30 if eager else 2)
            while not built() and time.time() < deadline:  # no task has been submitted
                time.sleep(0.05)
            before_any_task = built()

            @aray.remote
            def use():
                import eagerwheel
                return eagerwheel.ANSWER

            out = [eager, before_any_task, aray.get(use.remote())]
            sys.stdout.write(f"OUT {{json.dumps(out)}}\\n")
            aray.shutdown()
    """, timeout=120)
    lines = [json.loads(line[4:]) for line in r.stdout.splitlines() if line.startswith("OUT ")]
    assert lines == [[True, True, 42], [False, False, 42]]


def test_the_package_cache_removes_what_no_live_process_uses(tmp_path):
    import subprocess
    import sys
    root = tmp_path / "cache"
    code = f"""
import io, zipfile, sys
from aray._packages import PackageCache
buffer = io.BytesIO()
with zipfile.ZipFile(buffer, "w") as z:
    z.writestr("m.py", "x = 1")
cache = PackageCache({str(root)!r}, keep=100)  # (the test prunes)
for name in sys.argv[1:]:
    cache.get(name, lambda n: buffer.getvalue())
"""
    names = [f"wd_{i}.zip" for i in range(4)]
    for name in names:  # each by a process that has exited since
        subprocess.run([sys.executable, "-c", code, name], check=True, timeout=60)
    for i, name in enumerate(names):  # oldest first, and none of them just made
        os.utime(root / name[:-4], (1000 + i, 1000 + i))
    from aray._packages import PackageCache
    cache = PackageCache(str(root), keep=2)
    cache.prune()
    kept = sorted(e for e in os.listdir(root) if "." not in e)
    assert kept == ["wd_2", "wd_3"]  # the newest two; the others were unused
    # an entry a live process uses stays, however old
    holder = subprocess.Popen([sys.executable, "-c", code + "\nimport time; print('held', "
                               "flush=True); time.sleep(60)", "wd_9.zip"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        os.utime(root / "wd_9", (1, 1))  # the oldest now
        for name in ("wd_10.zip", "wd_11.zip"):
            subprocess.run([sys.executable, "-c", code, name], check=True, timeout=60)
        cache.prune()
        assert "wd_9" in os.listdir(root)
    finally:
        holder.kill()
        holder.wait()
