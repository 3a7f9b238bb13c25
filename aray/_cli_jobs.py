"""``aray job submit|status|logs|stop|list|delete``: Ray's job commands, over the job API
(:mod:`aray.job_submission`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def add_job_commands(sub) -> None:
    job = sub.add_parser("job", help="submit a program to run on a cluster, and follow it",
                         description="Run an entrypoint (a shell command) on the cluster's "
                         "head node in a runtime env, and follow it, as `ray job` does.")
    jobs = job.add_subparsers(dest="job_command", metavar="JOB_COMMAND", required=True)

    submit = jobs.add_parser("submit", help="submit a job: aray job submit [OPTIONS] -- "
                             "python script.py ARGS")
    _add_address(submit)
    submit.add_argument("--working-dir", help="a folder to upload: the job's current "
                        "directory and first on its sys.path, on every node")
    submit.add_argument("--runtime-env-json", help="the job's runtime_env, as JSON")
    submit.add_argument("--submission-id", help="the job's id (default: a new one)")
    submit.add_argument("--entrypoint-num-cpus", type=float, default=None,
                        help="CPUs the entrypoint itself holds while it runs (it runs on a "
                        "node that has them)")
    submit.add_argument("--entrypoint-num-gpus", type=float, default=None,
                        help="GPUs the entrypoint holds while it runs")
    submit.add_argument("--entrypoint-resources", help="other resources the entrypoint "
                        "holds while it runs, as JSON: '{\"far\": 1}'")
    submit.add_argument("--metadata-json", help="metadata to keep with the job, as JSON")
    submit.add_argument("--no-wait", action="store_true",
                        help="return once submitted instead of following the logs to the end")
    submit.add_argument("entrypoint", nargs=argparse.REMAINDER,
                        help="the command, after --")

    for name, text in (("status", "a job's state"), ("stop", "stop a job (SIGTERM, then "
                       "SIGKILL)"), ("delete", "forget an ended job and its logs")):
        command = jobs.add_parser(name, help=text)
        command.add_argument("submission_id")
        _add_address(command)
    logs = jobs.add_parser("logs", help="a job's output")
    logs.add_argument("submission_id")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing as the job writes, until it ends")
    _add_address(logs)
    listing = jobs.add_parser("list", help="every job of the cluster")
    _add_address(listing)


def _add_address(command) -> None:
    command.add_argument("--address", help="the dashboard's URL (http://HOST:8265), or a "
                         "cluster of this machine as `aray status` takes it (default: "
                         "$ARAY_ADDRESS, then the cluster on this machine)")
    command.add_argument("--token", help="the cluster's token (default: $ARAY_TOKEN, or the "
                         "local session's)")


def cmd_job(args) -> None:
    from .job_submission import JobSubmissionClient

    client = JobSubmissionClient(args.address, token=args.token)
    command = args.job_command
    if command == "submit":
        _submit(client, args)
    elif command == "status":
        info = client.get_job_info(args.submission_id)
        print(f"Status for job '{info.submission_id}': {info.status}")
        print(f"Status message: {info.message}")
    elif command == "logs":
        if args.follow:
            asyncio.run(_follow(client, args.submission_id))
        else:
            sys.stdout.write(client.get_job_logs(args.submission_id))
    elif command == "stop":
        stopped = client.stop_job(args.submission_id)
        print(f"Job '{args.submission_id}' was "
              + ("stopped." if stopped else "not running: nothing to stop."))
    elif command == "delete":
        client.delete_job(args.submission_id)
        print(f"Job '{args.submission_id}' deleted.")
    elif command == "list":
        for info in client.list_jobs():
            print(json.dumps({"submission_id": info.submission_id, "status": str(info.status),
                              "entrypoint": info.entrypoint, "message": info.message}))


def _submit(client, args) -> None:
    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not entrypoint:
        raise ValueError("give the command to run after --: aray job submit -- python "
                         "script.py")
    try:
        env = json.loads(args.runtime_env_json) if args.runtime_env_json else {}
        metadata = json.loads(args.metadata_json) if args.metadata_json else None
        resources = (json.loads(args.entrypoint_resources) if args.entrypoint_resources
                     else None)
    except json.JSONDecodeError as exc:
        raise ValueError("--runtime-env-json, --metadata-json or --entrypoint-resources is "
                         f"not JSON: {exc}") from None
    if args.working_dir:
        env["working_dir"] = args.working_dir
    submission_id = client.submit_job(
        entrypoint=" ".join(entrypoint), submission_id=args.submission_id, runtime_env=env,
        metadata=metadata, entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus, entrypoint_resources=resources)
    print(f"Job '{submission_id}' submitted successfully")
    if args.no_wait:
        print(f"Follow it with: aray job logs --follow {submission_id}")
        return
    asyncio.run(_follow(client, submission_id))
    info = client.get_job_info(submission_id)
    print(f"Job '{submission_id}' {str(info.status).lower()}: {info.message}")
    if info.status != "SUCCEEDED":
        sys.exit(1)


async def _follow(client, submission_id: str) -> None:
    async for text in client.tail_job_logs(submission_id):
        sys.stdout.write(text)
        sys.stdout.flush()
