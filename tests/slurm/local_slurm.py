"""A throwaway one-node SLURM cluster on this machine, for tests/test_slurm.py and for trying the SLURM
profile by hand (docs/cluster.md).

Everything lives in one folder: slurm.conf, gres.conf, a private munge key and socket, state, spool and
logs. The daemons listen on free ports, so the cluster never touches /etc/slurm, /etc/munge or a SLURM
that already runs here, and two of them can run side by side. Clients find it through ``SLURM_CONF`` and
wrappers in ``bin/`` that set it (``env()``). The node offers one fake GPU (gres ``gpu`` backed by
/dev/null), enough for SLURM to accept and account ``--gpus=1``; jobs get ``CUDA_VISIBLE_DEVICES=0``.

Needs root and Debian's ``slurm-wlm`` and ``munge`` packages (installed with apt-get when missing), not
systemd: the daemons are started here, as root, and stopped by the pids they write.

By hand::

    python tests/slurm/local_slurm.py up /tmp/ccfv-slurm     # prints: export SLURM_CONF=... PATH=...
    python tests/slurm/local_slurm.py down /tmp/ccfv-slurm
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
CLIENTS = ("srun", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "sacct", "sacctmgr")
PROGRAMS = ("munged", "slurmctld", "slurmd", *CLIENTS)
PARTITION = "debug"

SLURM_CONF = """\
# Written by tests/slurm/local_slurm.py: a one-node cluster for tests, in {root}
ClusterName=ccfvtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
# no cgroups in a container: track processes by parent id, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# no accounting database: sacct knows nothing, use squeue for job states
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# finished jobs stay visible to squeue/scontrol for 5 minutes
MinJobAge=300
SchedulerParameters=sched_interval=1
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:1 State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""

# A count-only gres.conf leaves the node INVALID; a device file makes SLURM set CUDA_VISIBLE_DEVICES.
GRES_CONF = "NodeName={host} Name=gpu File=/dev/null\n"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here (not root, packages missing and not installable)."""


def ensure_installed(timeout: float = 300) -> None:
    """Install slurm-wlm and munge with apt-get when a program is missing; SlurmUnavailable if that fails."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("needs root (starts munged, slurmctld and slurmd)")
    if not missing_programs():
        return
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"{missing_programs()} missing and apt-get is not available")
    deadline = time.monotonic() + timeout
    output = _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES, deadline=deadline)
    if missing_programs():  # a stale package list: update once, then try again
        _apt("update", "-q", deadline=deadline)
        output = _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES, deadline=deadline)
    if missing_programs():
        raise SlurmUnavailable(f"apt-get could not install {' '.join(PACKAGES)} (still missing "
                               f"{missing_programs()}): {output[-500:]}")


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if not shutil.which(p)]


def _apt(*args: str, deadline: float) -> str:
    command = ["apt-get", *args]
    try:
        done = subprocess.run(command, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                              capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"{' '.join(command)} did not finish in time") from None
    return done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> tuple[str, int, int]:
    """(NodeName, CPUs, RealMemory in MB) as slurmd itself detects them: slurmd looks itself up by that
    (short host) name, and a node that claims more CPUs or memory than it has is drained."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30, check=True).stdout
    name = re.search(r"\bNodeName=(\S+)", out).group(1)
    cpus = int(re.search(r"\bCPUs=(\d+)", out).group(1))
    memory = int(re.search(r"\bRealMemory=(\d+)", out).group(1))
    return name, cpus, memory


class LocalSlurm:
    """Start with ``up()``, stop with ``down()`` (or use as a context manager); ``env()`` for clients."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"

    def env(self, base: dict | None = None) -> dict:
        """``base`` (default os.environ) with SLURM_CONF set and the client wrappers first on PATH."""
        base = dict(os.environ if base is None else base)
        path = base.get("PATH", os.defpath)
        return {**base, "SLURM_CONF": str(self.conf), "PATH": f"{self.root / 'bin'}{os.pathsep}{path}"}

    def run(self, *command: str, timeout: float = 10, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=check)

    def up(self, timeout: float = 30) -> None:
        ensure_installed()
        host, cpus, memory = node_hardware()
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)  # munged wants the socket's folder searchable by all
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        self.conf.write_text(SLURM_CONF.format(root=self.root, host=host, cpus=cpus, memory=memory,
                                               ctld_port=free_port(), slurmd_port=free_port(),
                                               partition=PARTITION))
        (self.root / "gres.conf").write_text(GRES_CONF.format(host=host))  # read from slurm.conf's folder
        self._write_client_wrappers()
        munge = self.root / "munge"
        # --force: go on despite permissions munged finds loose (a folder under /tmp, say); every path here
        # is private to this cluster
        self._start(["munged", "--force", f"--socket={munge}/munge.socket", f"--key-file={key}",
                     f"--log-file={munge}/munged.log", f"--pid-file={munge}/munged.pid",
                     f"--seed-file={munge}/munged.seed"])
        self._start(["slurmctld", "-c"])  # -c: clean start, no saved state
        self._start(["slurmd"])
        self._wait_until_idle(timeout)

    def _write_client_wrappers(self) -> None:
        """bin/<client> runs the real client with SLURM_CONF set. Inside a job, the plugin's jobstep
        executor drops every SLURM_* variable, SLURM_CONF included, before its nested ``srun``; a real
        cluster keeps slurm.conf where srun looks by default, this one does not."""
        bin_dir = self.root / "bin"
        bin_dir.mkdir(exist_ok=True)
        for client in CLIENTS:
            real = shutil.which(client)
            if real:
                wrapper = bin_dir / client
                wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{real}" "$@"\n')
                wrapper.chmod(0o755)

    def _start(self, command: list[str]) -> None:
        done = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} did not start ({done.returncode}): {done.stdout}{done.stderr}"
                               f"\n{self.logs()}")

    def _wait_until_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            try:
                state = self.run("sinfo", "--noheader", "--format=%T", timeout=3, check=False).stdout.strip()
            except subprocess.TimeoutExpired:
                state = "(sinfo timed out)"
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the node is not idle after {timeout:.0f} s (sinfo: {state!r})\n{self.logs()}")

    def logs(self, tail: int = 20) -> str:
        parts = []
        for log in sorted(self.root.glob("log/*.log")) + sorted(self.root.glob("munge/*.log")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (MinJobAge), as scontrol's key=value fields."""
        out = self.run("scontrol", "--oneliner", "show", "job", check=False).stdout
        jobs = []
        for line in out.splitlines():
            fields: dict[str, str] = {}
            key = None
            for token in line.split():
                name, eq, value = token.partition("=")
                if eq and re.fullmatch(r"[\w:/]+", name):
                    key, fields[name] = name, value
                elif key:  # a value with a space in it
                    fields[key] += " " + token
            if "JobId" in fields:
                jobs.append(fields)
        return jobs

    def down(self, timeout: float = 15) -> None:
        """Cancel the cluster's jobs, then stop slurmd, slurmctld and munged, one at a time, each by the pid
        it wrote; SIGKILL whatever outlives the deadline. Safe to call on a half-started cluster."""
        if self.conf.exists():
            try:
                self.run("scancel", "--full", f"--partition={PARTITION}", timeout=5, check=False)
                deadline = time.monotonic() + timeout  # let slurmd end the jobs before it goes
                while time.monotonic() < deadline and self.run(
                        "squeue", "--noheader", "--states=RUNNING,COMPLETING", timeout=3, check=False).stdout.strip():
                    time.sleep(0.5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.root / pid_file
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            stop_process(pid, timeout)

    def __enter__(self) -> "LocalSlurm":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()


def stop_process(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as stopped
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("folder", type=Path, help="where the cluster keeps everything (created by up)")
    args = parser.parse_args(argv)
    cluster = LocalSlurm(args.folder)
    if args.action == "up":
        try:
            cluster.up()
        except SlurmUnavailable as e:
            print(f"SLURM unavailable: {e}", file=sys.stderr)
            return 1
        except BaseException:
            cluster.down()
            raise
        print(f"export SLURM_CONF={cluster.conf} PATH={cluster.root / 'bin'}:$PATH"
              f"   # partition {PARTITION!r}, one fake GPU")
    else:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
