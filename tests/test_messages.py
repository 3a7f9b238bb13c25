"""The messages a Ray user reads first: an infeasible request's warning, a Ray Client
address, and Ray's options that aray does not have yet."""

import os
import subprocess
import sys

import pytest

import aray


def test_infeasible_warning_names_a_misspelt_custom_resource_and_what_the_node_has(run_script):
    r = run_script("""
        out, err = echo_output()
        aray.init(num_cpus=2, resources={"GPU_MEMORY": 4}, include_dashboard=False)
        @aray.remote(resources={"GPU_MEMROY": 1})
        def f():
            return 1
        ref = f.remote()
        wait_until(lambda: "cannot be scheduled" in err.text(), 20,
                   message="the infeasible warning")
        ready, pending = aray.wait([ref], timeout=0)
        print("PENDING", len(pending))
        aray.shutdown()
    """)
    assert "PENDING 1" in r.stdout
    warning = r.stderr
    assert "The task f cannot be scheduled right now" in warning
    assert "It requires {CPU: 1.0, GPU_MEMROY: 1.0} for placement" in warning
    # every resource of the node, custom ones (and sizes) included
    assert "(the cluster has {CPU: 2.0, GPU_MEMORY: 4.0, memory: " in warning, warning
    assert "object_store_memory: " in warning and " GiB})" in warning
    assert "No node has GPU_MEMROY (did you mean GPU_MEMORY?)." in warning


def test_a_ray_client_address_says_to_write_aray_and_give_the_token(run_script):
    r = run_script("""
        for address in ("ray://10.1.2.3:10001", "ray://10.1.2.3:7000"):
            try:
                aray.init(address=address)
            except ValueError as e:
                print("REFUSED", e)
        os.environ["ARAY_ADDRESS"] = "ray://10.1.2.3:10001"
        try:
            aray.init()
        except ValueError as e:
            print("FROM THE ENVIRONMENT", e)
        print("INITIALIZED", aray.is_initialized())
    """)
    assert ("REFUSED 'ray://10.1.2.3:10001' is a Ray Client address. aray's client mode takes "
            "aray://HOST:PORT") in r.stdout, r.stdout
    # Ray Client's own port is no port of aray's: the head's default is suggested instead
    assert 'aray.init(address="aray://10.1.2.3:6379", token=...)' in r.stdout
    assert 'aray.init(address="aray://10.1.2.3:7000", token=...)' in r.stdout
    assert "ARAY_TOKEN" in r.stdout and "aray start --head --port 10001" not in r.stdout
    assert "FROM THE ENVIRONMENT 'ray://10.1.2.3:10001' is a Ray Client address" in r.stdout
    assert "INITIALIZED False" in r.stdout


def test_the_command_line_refuses_a_ray_client_address_too():
    proc = subprocess.run([sys.executable, "-m", "aray", "status", "--address",
                           "ray://10.1.2.3:10001"], capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.returncode == 1
    assert "aray status: 'ray://10.1.2.3:10001' is a Ray Client address" in proc.stderr


def plain():
    return 1


class Plain:
    def ping(self):
        return "pong"


@pytest.mark.parametrize("option, value", [
    ("_metadata", {"lib": {"x": 1}}),
    ("_labels", {"team": "a"}),
    ("enable_task_events", False),
    ("_generator_backpressure_num_objects", 2),
])
def test_rays_task_options_aray_lacks_say_not_supported_yet(option, value):
    message = f"{option} is not supported by aray yet: .*docs/migrating.md"
    with pytest.raises(ValueError, match=message):
        aray.remote(**{option: value})(plain)
    with pytest.raises(ValueError, match=message):
        aray.remote(plain).options(**{option: value})


def test_rays_older_placement_group_options_become_the_strategy():
    """``placement_group=``, ``placement_group_bundle_index=`` and
    ``placement_group_capture_child_tasks=`` mean a PlacementGroupSchedulingStrategy; a
    placement_group that is no group is refused, naming what it must be."""
    from aray._options import validate_actor_options, validate_task_options
    from aray.util.placement_group import PlacementGroup, PlacementGroupID

    pg = PlacementGroup(PlacementGroupID.from_hex("ab12"), [{"CPU": 1.0}, {"CPU": 1.0}])
    for validate in (validate_task_options, validate_actor_options):
        wire = validate({"placement_group": pg, "placement_group_bundle_index": 1,
                         "placement_group_capture_child_tasks": True})["scheduling_strategy"]
        assert (wire["kind"], wire["pg_id"], wire["index"], wire["capture"]) == \
            ("pg", "ab12", 1, True)
        assert "scheduling_strategy" not in validate({"placement_group": "default"})
        with pytest.raises(TypeError, match="placement_group must be a PlacementGroup"):
            validate({"placement_group": object()})
        with pytest.raises(ValueError, match="either placement_group or scheduling_strategy"):
            validate({"placement_group": pg, "scheduling_strategy": "SPREAD"})
    with pytest.raises(ValueError, match="placement_group_bundle_index 2 is out of range"):
        aray.remote(placement_group=pg, placement_group_bundle_index=2)(plain)


@pytest.mark.parametrize("option, value", [
    ("max_pending_calls", 10),
    ("allow_out_of_order_execution", True),
    ("enable_tensor_transport", True),
    ("object_store_memory", 2**20),
])
def test_rays_actor_options_aray_lacks_say_not_supported_yet(option, value):
    message = f"{option} is not supported by aray yet: .*docs/migrating.md"
    with pytest.raises(ValueError, match=message):
        aray.remote(**{option: value})(Plain)
    with pytest.raises(ValueError, match=message):
        aray.remote(Plain).options(**{option: value})


@pytest.mark.parametrize("option, value", [
    ("tensor_transport", "nccl"), ("max_task_retries", 2), ("retry_exceptions", True),
    ("enable_task_events", False), ("_generator_backpressure_num_objects", 2),
])
def test_rays_method_options_aray_lacks_say_not_supported_yet(option, value):
    with pytest.raises(ValueError, match=f"{option} is not supported by aray yet"):
        aray.method(**{option: value})


def test_unknown_options_say_so_with_the_closest_name():
    with pytest.raises(ValueError, match=r"unknown option 'num_cpu' for a remote function "
                                         r"\(did you mean 'num_cpus'\?\); the options are: "):
        aray.remote(plain).options(num_cpu=1)
    with pytest.raises(ValueError, match=r"unknown option 'max_concurency' for an actor "
                                         r"\(did you mean 'max_concurrency'\?\)"):
        aray.remote(Plain).options(max_concurency=2)
    with pytest.raises(ValueError, match=r"unknown option 'runtime_envs' for @aray.remote "
                                         r"\(did you mean 'runtime_env'\?\)"):
        aray.remote(runtime_envs={})
    with pytest.raises(ValueError, match="unknown option 'colour' for an actor method; the "
                                         "options are: concurrency_group, name, num_returns"):
        aray.method(colour="red")
    # an option of the other kind says whose it is
    with pytest.raises(ValueError, match="max_concurrency is an option of actors, not of "
                                         "remote functions"):
        aray.remote(max_concurrency=2)(plain)
    with pytest.raises(ValueError, match="max_calls is an option of remote functions, not of "
                                         "actors"):
        aray.remote(max_calls=2)(Plain)


def test_rays_defaults_spelt_out_are_accepted(cluster):
    """Code that passes Ray's default values of those options runs unchanged."""
    def plain():  # defined here, it travels by value
        return 1

    defaults = dict(runtime_env=None, scheduling_strategy="DEFAULT", placement_group=None,
                    placement_group_bundle_index=-1, placement_group_capture_child_tasks=None,
                    _metadata=None, accelerator_type=None, label_selector={},
                    enable_task_events=True, max_calls=0)
    f = aray.remote(**defaults)(plain)
    assert aray.get(f.remote()) == 1
    assert aray.get(aray.remote(plain).options(runtime_env={}).remote()) == 1
    actor_class = aray.remote(Plain).options(runtime_env=None, max_pending_calls=-1,
                                             allow_out_of_order_execution=False)
    assert not actor_class._options.get("runtime_env")


def test_rays_init_arguments_aray_lacks_say_not_supported_yet():
    # (refused before anything starts)
    with pytest.raises(ValueError, match=r"init\(storage=\.\.\.\) is not supported by aray "
                                         r"yet: .*Not in aray yet"):
        aray.init(storage="/mnt/cluster_storage")
    with pytest.raises(ValueError, match="local_mode"):
        aray.init(local_mode=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_cpu'"):
        aray.init(num_cpu=2)
