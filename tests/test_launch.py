"""launch/tpu_vm.sh and launch/gpu_slurm.sh: the commands they print (--dry-run) and run.

Nothing reaches a cloud or a cluster: `gcloud`, `sbatch`, `srun`, ... are fakes on PATH
that record their arguments, and the batch script gpu_slurm.sh writes is executed with a
fake srun, so the exact command every process would start is checked, quoting included.
"""

import json
import os
import shlex
import stat
import subprocess
import tarfile

import pytest

from tests.test_config import ROOT

TPU = os.path.join(ROOT, "launch", "tpu_vm.sh")
SLURM = os.path.join(ROOT, "launch", "gpu_slurm.sh")
RECORDER = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
{body}
"""


def fake_bin(tmp_path, **bodies):
    """A directory of fake commands: each records its argv to $FAKE_LOG, then runs `body`."""
    path = tmp_path / "bin"
    path.mkdir(exist_ok=True)
    for name, body in bodies.items():
        exe = path / name
        exe.write_text(RECORDER.format(body=body))
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return path


def run(script, args, tmp_path, bin_dir=None, cwd=ROOT, **env):
    log = tmp_path / "calls.jsonl"
    full_env = dict(os.environ, FAKE_LOG=str(log), TMPDIR=str(tmp_path), **env)
    if bin_dir is not None:
        full_env["PATH"] = f"{bin_dir}:{full_env['PATH']}"
    done = subprocess.run(
        ["bash", script, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


def printed(stdout):
    """The commands a --dry-run printed ("+ cmd args"), as argv lists."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def remote(argv):
    """The --command of a `gcloud ... ssh` argv."""
    (cmd,) = [a.split("=", 1)[1] for a in argv if a.startswith("--command=")]
    return cmd


TPU_ARGS = [
    "--name",
    "t1",
    "--zone",
    "us-central2-b",
    "--project",
    "proj",
    "--accelerator-type",
    "v4-32",
    "--bucket",
    "my-bucket",
    "--delete-after",
    "--config",
    "configs/barlow_twins.py:cifar10",
    "--",
    "--config.batch_size=1024",
    "--config.data.data_dir=/mnt/it's data",
]
WHERE = ["--zone=us-central2-b", "--project=proj"]


def test_tpu_dry_run_prints_every_command_and_runs_none(tmp_path):
    bin_dir = fake_bin(tmp_path, gcloud="sys.exit(1)")
    done, calls = run(TPU, ["--dry-run", *TPU_ARGS], tmp_path, bin_dir)
    assert done.returncode == 0, done.stderr
    assert calls == []  # nothing ran
    cmds = printed(done.stdout)
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    assert gcloud[0] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "describe",
        "t1",
        *WHERE,
        "--format=value(state)",
    ]
    assert gcloud[1] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "t1",
        *WHERE,
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
    ]
    assert gcloud[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t1", *WHERE, "--quiet"]
    # Every copy and remote command goes to all workers.
    for c in gcloud[2:-1]:
        assert c[4] in ("scp", "ssh") and "--worker=all" in c, c
    scp = [c[5:7] for c in gcloud if c[4] == "scp"]
    assert scp == [
        [str(tmp_path / "jssl-t1.tar.gz"), "t1:jssl.tar.gz"],
        ["configs/barlow_twins.py", "t1:jssl-config.py"],
    ]
    ssh = [remote(c) for c in gcloud if c[4] == "ssh"]
    assert "pip install -q -e ~/jssl" in ssh[0] and "'jax[tpu]'" in ssh[0]
    assert "gcsfuse --implicit-dirs my-bucket ~/gcs" in ssh[1]
    # The one command every worker runs: the same everywhere, its arguments intact.
    words = shlex.split(ssh[2].split("&&", 1)[1].split("2>&1")[0])
    assert words == [
        "python3",
        "-m",
        "jssl.main",
        "--config",
        "jssl-config.py:cifar10",
        "--workdir",
        "$HOME/gcs/jssl/t1",
        "--config.batch_size=1024",
        "--config.data.data_dir=/mnt/it's data",
    ]
    assert ssh[2].startswith("set -o pipefail; cd ~ && ")
    assert ssh[2].endswith("| tee -a ~/jssl-t1.log")


def test_tpu_run_executes_what_the_dry_run_prints(tmp_path):
    # describe fails (no such VM) -> create; the run's ssh exits 3 -> the script exits 3,
    # and --delete-after still deletes.
    bin_dir = fake_bin(
        tmp_path,
        gcloud="""
if sys.argv[4] == "describe": sys.exit(1)
if sys.argv[4] == "ssh" and any("jssl.main" in a for a in sys.argv): sys.exit(3)
""",
    )
    dry, _ = run(TPU, ["--dry-run", *TPU_ARGS], tmp_path, bin_dir)
    done, calls = run(TPU, TPU_ARGS, tmp_path, bin_dir)
    assert done.returncode == 3, done.stderr
    assert calls == [c for c in printed(dry.stdout) if c[0] == "gcloud"]
    # The packed checkout: this repository's files, ignored ones (caches, runs) left out.
    with tarfile.open(tmp_path / "jssl-t1.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"jssl/train.py", "jssl/configs/barlow_twins.py", "setup.cfg"} <= names
    with tarfile.open(tmp_path / "jssl-t1.tar.gz") as tar:
        assert tar.getmember("configs").issym()  # the link to jssl/configs, kept a link
    assert not any("__pycache__" in n for n in names)


def test_tpu_reuses_an_existing_vm_and_installs_from_a_spec(tmp_path):
    bin_dir = fake_bin(tmp_path, gcloud="print('READY')")
    args = [
        "--name",
        "t2",
        "--zone",
        "z",
        "--accelerator-type",
        "v5litepod-8",
        "--install",
        "git+https://github.com/org/jssl@main",
        "--config",
        "configs/simclr.py",
        "--workdir",
        "runs/s",
    ]
    done, calls = run(TPU, args, tmp_path, bin_dir)
    assert done.returncode == 0, done.stderr
    verbs = [c[4] for c in calls]
    assert verbs == ["describe", "ssh", "scp", "ssh"]  # no create, no archive, no delete
    assert "pip install -q -U 'jax[tpu]' git+https://github.com/org/jssl@main" in remote(calls[1])
    assert "python3 -m jssl.main --config jssl-config.py --workdir runs/s 2>&1" in remote(calls[3])


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["--zone", "z", "--config", "configs/simclr.py", "--accelerator-type", "v4-8"],
            "--name is required",
        ),
        (
            [
                "--name",
                "t",
                "--zone",
                "z",
                "--accelerator-type",
                "v4-32",
                "--config",
                "configs/simclr.py",
            ],
            "several workers: give --bucket",
        ),
        (
            [
                "--name",
                "t",
                "--zone",
                "z",
                "--accelerator-type",
                "v4-8",
                "--config",
                "configs/nope.py",
            ],
            "config file configs/nope.py not found",
        ),
        (["--name", "t", "--zone", "z", "--frobnicate"], "unknown option --frobnicate"),
    ],
)
def test_tpu_mistakes_are_one_line(tmp_path, args, needle):
    bin_dir = fake_bin(tmp_path, gcloud="")
    done, calls = run(TPU, ["--dry-run", *args], tmp_path, bin_dir)
    assert done.returncode == 2 and calls == []
    assert done.stderr.count("\n") == 1 and needle in done.stderr, done.stderr


def test_tpu_delete_and_logs(tmp_path):
    bin_dir = fake_bin(tmp_path, gcloud="")
    done, calls = run(TPU, ["--name", "t1", "--zone", "z", "--delete"], tmp_path, bin_dir)
    assert done.returncode == 0 and calls == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t1", "--zone=z", "--quiet"]
    ]
    done, calls = run(TPU, ["--name", "t1", "--zone", "z", "--logs"], tmp_path, bin_dir)
    assert done.returncode == 0 and remote(calls[-1]) == "tail -n +1 -F ~/jssl-t1.log"
    assert "--worker=0" in calls[-1]


SLURM_ARGS = [
    "--nodes",
    "2",
    "--gpus-per-node",
    "2",
    "--partition",
    "gpu",
    "--time",
    "1:00:00",
    "--config",
    "configs/barlow_twins.py:cifar10",
    "--workdir",
    "/shared/runs/bt",
    "--",
    "--config.data.data_dir=/shared/my data",
]


def test_slurm_dry_run_prints_the_batch_script_and_commands(tmp_path):
    bin_dir = fake_bin(tmp_path, sbatch="sys.exit(1)", srun="sys.exit(1)")
    done, calls = run(SLURM, ["--dry-run", *SLURM_ARGS], tmp_path, bin_dir)
    assert done.returncode == 0, done.stderr
    assert calls == [] and not os.path.exists(os.path.join(ROOT, "slurm-logs"))
    lines = done.stdout.splitlines()
    for directive in (
        "--job-name=jssl-barlow_twins",
        "--nodes=2",
        "--ntasks-per-node=2",
        "--gpus-per-node=2",
        "--time=1:00:00",
        "--partition=gpu",
        "--output=slurm-logs/jssl-barlow_twins-%j.out",
    ):
        assert f"#SBATCH {directive}" in lines, directive
    assert printed(done.stdout) == [
        ["sbatch", "--parsable", "slurm-logs/jssl-barlow_twins.sbatch"],
        ["tail", "-n", "+1", "-F", "slurm-logs/jssl-barlow_twins-<job id>.out"],
    ]


@pytest.mark.parametrize("per", ["gpu", "node"])
def test_slurm_job_starts_each_process_with_its_id(tmp_path, per):
    """Submit with fakes, then execute the batch script it wrote under a fake srun (task 1
    of 4): the jssl command line that process gets, exactly."""
    bin_dir = fake_bin(
        tmp_path,
        sbatch="print('4242')",
        squeue="",
        sacct="print('COMPLETED')",
        scontrol="print('nodeA'); print('nodeB')",
        srun="""
env = dict(os.environ, SLURM_NTASKS="4", SLURM_PROCID="1", SLURM_LOCALID="1")
os.execvpe(sys.argv[2], sys.argv[2:], env)  # argv[1]: --kill-on-bad-exit=1
""",
        python_fake="""
with open(os.environ["FAKE_OUT"], "w") as f:
    json.dump({"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "path": os.environ.get("PYTHONPATH", "")}, f)
""",
    )
    cwd = tmp_path / "submit"
    (cwd / "configs").mkdir(parents=True)
    (cwd / "configs" / "barlow_twins.py").write_text("# a config\n")
    args = ["--per", per, "--python", str(bin_dir / "python_fake"), *SLURM_ARGS]
    done, calls = run(SLURM, args, tmp_path, bin_dir, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert calls[0] == ["sbatch", "--parsable", "slurm-logs/jssl-barlow_twins.sbatch"]
    script = cwd / "slurm-logs" / "jssl-barlow_twins.sbatch"
    assert f"#SBATCH --ntasks-per-node={2 if per == 'gpu' else 1}" in script.read_text()

    out = tmp_path / "process.json"
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_LOG=str(tmp_path / "l"),
        FAKE_OUT=str(out),
        SLURM_JOB_ID="12345",
        SLURM_JOB_NODELIST="node[A-B]",
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    job = subprocess.run(
        ["bash", str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert job.returncode == 0, job.stderr
    got = json.loads(out.read_text())
    assert got["argv"] == [
        "-m",
        "jssl.main",
        "--coordinator_address",
        "nodeA:32345",
        "--num_processes",
        "4",
        "--process_id",
        "1",
        "--config",
        "configs/barlow_twins.py:cifar10",
        "--workdir",
        "/shared/runs/bt",
        "--config.data.data_dir=/shared/my data",
    ]
    assert got["cuda"] == ("1" if per == "gpu" else None)
    assert got["path"].split(":")[0] == ROOT  # jssl from this checkout


def test_slurm_failed_job_and_cancel(tmp_path):
    bin_dir = fake_bin(
        tmp_path, sbatch="print('77;cluster')", squeue="", sacct="print('FAILED')", scancel=""
    )
    cwd = tmp_path / "submit"
    (cwd / "configs").mkdir(parents=True)
    (cwd / "configs" / "barlow_twins.py").write_text("# a config\n")
    done, calls = run(SLURM, SLURM_ARGS, tmp_path, bin_dir, cwd=cwd)
    assert done.returncode != 0 and "job 77 ended: FAILED" in done.stderr
    done, calls = run(SLURM, ["--cancel", "77"], tmp_path, bin_dir)
    assert done.returncode == 0 and calls[-1] == ["scancel", "77"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--gpus-per-node", "8", "--config", "configs/simclr.py", "--workdir", "w"], "--nodes"),
        (
            [
                "--nodes",
                "1",
                "--gpus-per-node",
                "8",
                "--per",
                "socket",
                "--config",
                "configs/simclr.py",
                "--workdir",
                "w",
            ],
            "--per must be gpu or node",
        ),
        (["--nodes", "1", "--gpus-per-node", "8", "--config", "configs/simclr.py"], "--workdir"),
    ],
)
def test_slurm_mistakes_are_one_line(tmp_path, args, needle):
    done, _ = run(SLURM, ["--dry-run", *args], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and needle in done.stderr
