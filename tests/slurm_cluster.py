"""A real one-node SLURM cluster on this machine, for the tests: munged, slurmctld and slurmd.

Everything lives in one temporary directory (config, munge key and socket, state, logs) and
the daemons listen on free ports, so the cluster touches nothing of the machine's own SLURM
set-up. Clients (sbatch, squeue, submitit) find it through SLURM_CONF. The node offers this
machine's CPUs and one generic `gpu` resource backed by /dev/null: jobs that request a GPU
(the launcher's default) are scheduled as on a GPU cluster, and torch inside them sees no
CUDA device and trains on the CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "cpu"


def missing() -> str | None:
    """Why a test cluster cannot start here (a sentence), or None when it can."""
    absent = [d for d in (*DAEMONS, "sbatch", "squeue", "scontrol") if shutil.which(d) is None]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} not found; apt-get install slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Start with `start()`, stop with `stop()`; `env` is os.environ with SLURM_CONF set."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 30.0) -> None:
        d = self.root
        for sub in ("munge", "state", "spool", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "munge").chmod(0o700)
        key = d / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = d / "munge" / "munge.socket"
        subprocess.run(
            ["munged", f"--key-file={key}", f"--socket={sock}", f"--pid-file={d / 'munged.pid'}"]
            + [f"--log-file={d / 'log' / 'munged.log'}", f"--seed-file={d / 'munge' / 'seed'}", "--force"],
            check=True,
        )
        host = socket.gethostname().split(".")[0]
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 9 // 10
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=mnistlab-test",
                    f"SlurmctldHost={host}",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={sock}",
                    "CredType=cred/munge",
                    # No cgroups or systemd here: processes tracked by their parent, no binding.
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SlurmUser=root",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "JobRequeue=1",
                    "GresTypes=gpu",
                    f"StateSaveLocation={d / 'state'}",
                    f"SlurmdSpoolDir={d / 'spool'}",
                    f"SlurmctldPidFile={d / 'slurmctld.pid'}",
                    f"SlurmdPidFile={d / 'slurmd.pid'}",
                    f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
                    f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb} Gres=gpu:1 State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        # slurmd reads gres.conf from slurm.conf's folder.
        (d / "gres.conf").write_text(f"NodeName={host} Name=gpu Count=1 File=/dev/null\n")
        subprocess.run(["slurmctld", "-i"], env=self.env, check=True)
        subprocess.run(["slurmd"], env=self.env, check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout
            if state.strip() == "idle":
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the test SLURM node did not become idle in {timeout:.0f} s; logs in {d / 'log'}")

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.root / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(50):  # the next daemon's socket must be free when a later run starts
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)

    def squeue(self, *args: str) -> str:
        return subprocess.run(["squeue", "-h", *args], env=self.env, capture_output=True, text=True).stdout

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True)

    def diagnose(self, job: str, sweep: Path) -> str:
        """What the cluster says of `job`, and the tails of the daemons' and the sweep's job logs: for a failing test."""
        parts = [
            "squeue: " + self.squeue("-o", "%i %t %r %S"),
            "scontrol show job: " + self.scontrol("show", "job", job).stdout,
        ]
        logs = [*sorted((self.root / "log").glob("*.log")), *sorted((sweep / ".submitit").glob("*/*_log.*"))]
        for log in logs:
            parts.append(f"--- {log} (last 40 lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)
