"""A real single-node SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) in one folder.

Everything lives under the folder given: configuration (slurm.conf, slurmdbd.conf,
gres.conf), the munge key and socket, MariaDB's data, state, spool, logs and one PID
file per daemon; nothing is written to /etc or /var, and the one thing outside the
folder is the link /run/slurm/conf to its etc/ (see _link_configuration). Clients
find the cluster through ``SLURM_CONF`` (``cluster.env``). The node has a fake GPU
(gres ``gpu:1`` on /dev/null) and is in two partitions, ``cpu`` (the default) and
``gpu``; accounting goes through slurmdbd to MariaDB so ``sacct`` works and
associations are enforced; jobs that use more memory than they asked for are killed
(jobacct_gather/linux with OverMemoryKill: no cgroups, there is no systemd here).

Needs root and Debian's packages (``make slurm-local``). By hand::

    python -m tests.slurm.cluster start /tmp/slurm     # prints the SLURM_CONF to export
    SLURM_CONF=/tmp/slurm/etc/slurm.conf sinfo
    python -m tests.slurm.cluster stop /tmp/slurm
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sacct", "sacctmgr", "scontrol", "sinfo", "squeue", "scancel")
SETUP = ("mariadb-install-db", "mariadb")
CLUSTER_NAME = "domainllm"
# Where clients look without SLURM_CONF: the system's file, then a configless
# slurmd's copy.
SYSTEM_CONF = "/etc/slurm/slurm.conf"
CONFIGLESS_LINK = "/run/slurm/conf"
# The node's memory as SLURM sees it: larger than this machine's, like the GPU is
# fake, so the profile's GPU-sized requests (64 GB) are accepted unchanged. What a
# job may really use is what it asked for, enforced by OverMemoryKill.
NODE_MEMORY_MB = 512000


def unavailable() -> str | None:
    """Why a local cluster cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root"
    missing = [p for p in (*DAEMONS, *CLIENTS, *SETUP) if shutil.which(p) is None]
    if missing:
        return f"missing {', '.join(missing)} (make slurm-local installs Debian's packages)"
    for path in (SYSTEM_CONF, CONFIGLESS_LINK):
        if os.path.exists(path):
            # Jobs' srun (no SLURM_CONF) would read that cluster's configuration.
            return f"{path} exists: another SLURM cluster is configured on this machine"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _alive(pid: int) -> bool:
    try:
        # Reap it first if it is our own child that has exited (a zombie answers kill 0).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class LocalSlurm:
    """One node (this machine), partitions ``cpu`` (default) and ``gpu``, an account."""

    def __init__(self, root: Path, account: str = "domainllm-test"):
        self.root = Path(root).resolve()
        self.account = account
        self.etc = self.root / "etc"
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "log"
        self.conf = self.etc / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.munge_socket = self.run_dir / "munge.socket"
        self.db_socket = self.run_dir / "mariadb.socket"

    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM clients (and jobs: sbatch exports it)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ---- running commands ----------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def _succeeds(self, *cmd: str) -> bool:
        return subprocess.run(cmd, env=self.env, capture_output=True, timeout=30).returncode == 0

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s; logs in {self.log_dir}")

    def _start(self, name: str, *cmd: str) -> int:
        """Start a daemon in the foreground of its own session and record its PID."""
        log = open(self.log_dir / f"{name}.out", "ab")  # noqa: SIM115 (the child keeps it)
        proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited at start ({proc.returncode}): "
                f"{(self.log_dir / f'{name}.out').read_text()[-2000:]}"
            )
        return proc.pid

    # ---- configuration -------------------------------------------------------------

    def configure(self) -> None:
        for d in (self.etc, self.run_dir, self.log_dir, self.root / "ctld", self.root / "spool"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        ctld_port, slurmd_port, dbd_port, db_port = _free_ports(4)
        self.db_port = db_port
        key = self.etc / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        topology = self._topology()
        auth = f"socket={self.munge_socket}"
        log = self.log_dir
        (self.etc / "slurm.conf").write_text(
            f"""\
ClusterName={CLUSTER_NAME}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo={auth}
CredType=cred/munge
StateSaveLocation={self.root}/ctld
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.run_dir}/slurmctld.daemon.pid
SlurmdPidFile={self.run_dir}/slurmd.daemon.pid
SlurmctldLogFile={log}/slurmctld.log
SlurmdLogFile={log}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
# Memory must be consumable for the node to get each job's limit (with CR_CPU a
# job used 300 MB on a 50 MB request unharmed).
SelectTypeParameters=CR_CPU_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
# The node's fake memory and GPU are taken as written, not as slurmd finds them.
SlurmdParameters=config_overrides
MinJobAge=300
InactiveLimit=0
KillWait=5
# Jobs are killed when they use more memory than they asked for (no cgroups here).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
# For connections to slurmdbd this is the munge socket, not a password.
AccountingStoragePass={self.munge_socket}
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 {topology} RealMemory={NODE_MEMORY_MB} Gres=gpu:1
PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.node} MaxTime=INFINITE State=UP
"""
        )
        (self.etc / "gres.conf").write_text("AutoDetect=off\nName=gpu File=/dev/null\n")
        dbd = self.etc / "slurmdbd.conf"
        dbd.write_text(
            f"""\
AuthType=auth/munge
AuthInfo={auth}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
LogFile={log}/slurmdbd.log
PidFile={self.run_dir}/slurmdbd.daemon.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
"""
        )
        dbd.chmod(0o600)

    def _topology(self) -> str:
        """CPUs, boards, sockets, cores and threads as slurmd finds them (not memory)."""
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        fields = out.split("\n")[0].split()
        keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        return " ".join(f for f in fields if f.split("=")[0] in keep)

    # ---- start and stop ------------------------------------------------------------

    def start(self) -> None:
        """Configure and start the daemons, add the account, wait for an idle node."""
        self.configure()
        self._start(
            "munged",
            "munged",
            "--foreground",
            # munged refuses a socket below a private (0700) folder such as mkdtemp's.
            "--force",
            f"--socket={self.munge_socket}",
            f"--key-file={self.etc / 'munge.key'}",
            f"--log-file={self.log_dir / 'munged.log'}",
            f"--pid-file={self.run_dir / 'munged.daemon.pid'}",
            f"--seed-file={self.run_dir / 'munged.seed'}",
        )
        self._wait("munged", self.munge_socket.exists, 20)
        self._start_mariadb()
        self._start("slurmdbd", "slurmdbd", "-D")
        self._wait("slurmdbd", lambda: self._succeeds("sacctmgr", "-n", "list", "cluster"))
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
        self.run("sacctmgr", "-i", "add", "account", self.account, f"cluster={CLUSTER_NAME}")
        self.run("sacctmgr", "-i", "add", "user", "root", f"account={self.account}")
        self._start("slurmctld", "slurmctld", "-D", "-f", str(self.conf))
        self._wait("slurmctld", lambda: "UP" in self.run("scontrol", "ping", check=False))
        self._link_configuration()
        self._start("slurmd", "slurmd", "-D", "-f", str(self.conf), "-N", self.node)
        self._wait(
            "the node",
            lambda: set(self.run("sinfo", "-h", "-N", "-o", "%T", check=False).split()) == {"idle"},
            60,
        )

    def _link_configuration(self) -> None:
        """Link etc/ at /run/slurm/conf, where clients without SLURM_CONF look.

        The SLURM executor runs each job's work under ``srun`` with every SLURM_*
        variable removed, SLURM_CONF included; on a real cluster srun then reads
        /etc/slurm/slurm.conf or, on configless clusters, slurmd's copy linked at
        /run/slurm/conf. This is the latter, linked by hand: a configless slurmd
        could not fetch it, its munge socket being named in the file it fetches.
        """
        link = Path(CONFIGLESS_LINK)
        if link.exists():
            raise RuntimeError(f"{link} exists: another SLURM cluster runs on this machine")
        if link.is_symlink():  # dangling: left by a run that was killed
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self.etc)

    def _start_mariadb(self) -> None:
        data = self.root / "mariadb"
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                "--user=root",
                f"--datadir={data}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        self._start(
            "mariadbd",
            "mariadbd",
            "--no-defaults",
            "--user=root",
            f"--datadir={data}",
            f"--socket={self.db_socket}",
            f"--pid-file={self.run_dir / 'mariadbd.daemon.pid'}",
            f"--port={self.db_port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            f"--log-error={self.log_dir / 'mariadbd.log'}",
            # slurmdbd's recommended settings (accounting_storage/mysql warns otherwise).
            "--innodb-lock-wait-timeout=900",
            "--innodb-buffer-pool-size=1G",
            "--innodb-log-file-size=64M",
        )
        sql = [
            "mariadb",
            "--no-defaults",
            f"--socket={self.db_socket}",
            "-uroot",
            "-e",
        ]
        self._wait("mariadbd", lambda: self._succeeds(*sql, "SELECT 1"), 60)
        self.run(
            *sql,
            "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';"
            " GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';",
        )

    def stop(self, timeout: float = 30) -> None:
        """Cancel what is left and stop every daemon by its PID file, newest first."""
        if (self.run_dir / "slurmctld.pid").exists():
            self.run("scancel", "--user=root", check=False, timeout=20)
            time.sleep(1)
        for name in reversed(DAEMONS):
            pid_file = self.run_dir / f"{name}.pid"
            if not pid_file.exists():
                continue
            pid = int(pid_file.read_text())
            if _alive(pid) and self._is(pid, name):
                os.kill(pid, signal.SIGTERM)
                end = time.monotonic() + timeout
                while _alive(pid) and time.monotonic() < end:
                    time.sleep(0.2)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    while _alive(pid):
                        time.sleep(0.1)
            pid_file.unlink(missing_ok=True)
        # The link of _link_configuration.
        link = Path(CONFIGLESS_LINK)
        if link.is_symlink() and Path(os.readlink(link)).is_relative_to(self.root):
            link.unlink()

    def _is(self, pid: int, name: str) -> bool:
        """The PID is still this cluster's daemon (not a recycled number)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        ours = str(self.root).encode()
        return Path(argv[0].decode()).name == name and (
            any(ours in a for a in argv) or ours in environ
        )

    # ---- accounting ----------------------------------------------------------------

    def sacct(self, fields: list[str], *args: str) -> list[dict[str, str]]:
        """Every allocation (not its steps) as a dict of the fields asked for."""
        out = self.run(
            "sacct", "-a", "-X", "-n", "-P", "--format", ",".join(fields), *args, timeout=30
        )
        return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    cluster = LocalSlurm(Path(argv[1]))
    if argv[0] == "start":
        reason = unavailable()
        if reason:
            print(f"cannot start: {reason}", file=sys.stderr)
            return 1
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
