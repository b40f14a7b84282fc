"""A recipe on a real Ray cluster: a head started with `ray start --head` (free ports, its own temp
dir, Ray 2.60's token authentication on), a run submitted with `ray job submit --working-dir .`, and
a driver joining it with `rlwhf train --address auto`. docs/cluster.md is what this test runs."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SHORT

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head on this machine, alone in its process group so that it can be stopped alone (`ray
    stop` would stop every Ray here); the environment its jobs and clients need: rlwhf's on the
    PATH, and a HOME of its own for the cluster's authentication token."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.fail("the `ray` command is missing from the environment: `make setup` installs ray[default]")
    gcs, dashboard = free_port(), free_port()
    # short: the head's sockets live under it, and a Unix socket's path is at most 107 bytes
    ray_tmp = Path(tempfile.mkdtemp(prefix="rlwhf-ray-", dir="/tmp"))
    head_log = tmp_path / "ray-head.log"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": str(home),
        "RAY_AUTH_MODE": "token",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "WANDB_MODE": "offline",
    }
    env.pop("RAY_ADDRESS", None)
    # the cluster's token, made before the head starts (a head started without one runs unauthenticated)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    assert (home / ".ray" / "auth_token").is_file()
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--num-cpus=2",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--temp-dir={ray_tmp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=head_log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        status = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}"}
        deadline = time.time() + 180
        while subprocess.run([str(BIN / "ray"), "job", "list"], env=status, capture_output=True).returncode != 0:
            assert head.poll() is None, head_log.read_text()[-3000:]
            assert time.time() < deadline, "the Ray head's job server did not come up within 3 minutes"
            time.sleep(2)
        yield {"env": env, "gcs": f"127.0.0.1:{gcs}", "jobs": f"http://127.0.0.1:{dashboard}"}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ray_job_submit_and_a_joining_driver_run_a_recipe_on_a_real_head(ray_head, tmp_path):
    runs = tmp_path / "runs"  # a path every node sees (one node here)
    short = [*SHORT, "train.steps=2", f"run.output_dir={runs}"]
    deadline = time.time() + 600  # a machine busy with other work took over 300 s once
    while True:
        submit = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                ray_head["jobs"],
                "--working-dir",
                str(ROOT),
                "--",
                "rlwhf",
                "train",
                "recipes/tiny-base.yaml",
                *short,
                "run.name=submitted",
            ],
            env=ray_head["env"],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        # the job server answers before the head's agent, which runs the job, is up (slow on a busy machine)
        if "No available agent" not in submit.stdout + submit.stderr or time.time() > deadline:
            break
        time.sleep(5)
    log = submit.stdout[-4000:] + submit.stderr[-2000:]
    assert submit.returncode == 0 and "succeeded" in submit.stdout, log  # "Job 'raysubmit_...' succeeded"
    summary = json.loads((runs / "submitted" / "summary.json").read_text())
    assert summary["steps"] == 2 and (runs / "submitted" / "checkpoints" / "step_2" / "config.json").is_file()

    joined = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlwhf.cli",
            "train",
            str(ROOT / "recipes" / "tiny-base.yaml"),
            *short,
            "run.name=joined",
            "--address",
            "auto",
        ],
        env={**ray_head["env"], "RAY_ADDRESS": ray_head["gcs"]},
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
    )
    assert joined.returncode == 0, joined.stdout[-3000:] + joined.stderr[-3000:]
    assert json.loads((runs / "joined" / "summary.json").read_text())["steps"] == 2
