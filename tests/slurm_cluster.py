"""
A real one-node SLURM cluster in a scratch folder, for tests (the recipe: ../shared/docs/slurm-local-cluster.md).

    reason = install()           # None when slurmctld, slurmd, sbatch and munged are there (apt-get if root)
    cluster = start()            # munged + slurmctld + slurmd on free ports, node idle; Cluster
    subprocess.run(["sbatch", ...], env=cluster.env)    # env: SLURM_CONF points at this cluster
    cluster.stop(remove=True)    # cancels its jobs, stops slurmd and slurmctld by PID, then munged

    python tests/slurm_cluster.py     # start one by hand: prints `export SLURM_CONF=...`; Ctrl-C stops it

Everything lives under one fresh folder (state, spool, logs, munge key and socket), the daemons listen on free
ports, so a test cluster never meets another cluster's jobs or state. No cgroups: CPU and memory limits are
not enforced (2 CPUs run 2 one-CPU tasks at a time), and requeued jobs wait ~2 min before they are eligible
again unless released with release(job).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "munged", "mungekey"]


def missing_binaries():
    return [b for b in BINARIES if not shutil.which(b) and not os.path.exists(f"/usr/sbin/{b}")]


def install():
    """Install the SLURM packages when missing (root with apt-get only). Returns None, or why it can't."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"SLURM is not installed ({', '.join(missing_binaries())} missing) and installing it needs root " \
               f"with apt-get: apt-get install -y --no-install-recommends {' '.join(PACKAGES)}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends"] + PACKAGES
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:  # stale package lists: update once and retry
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get install of {' '.join(PACKAGES)} failed: {e}"
    if out.returncode != 0 or missing_binaries():
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
        return f"apt-get install of {' '.join(PACKAGES)} failed (exit {out.returncode}): {tail[0]}"
    return None


def sbin(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, root):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.procs = []  # slurmctld, slurmd (Popen)
        self.munged_pid = None

    def run(self, *cmd, check=True, timeout=30):
        out = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {out.returncode}): {out.stderr.strip()}")
        return out

    def sbatch(self, script, cwd):
        """Submit a script (text) from cwd; returns the job id."""
        out = subprocess.run(["sbatch", "--parsable"], input=script, env=self.env, cwd=cwd, capture_output=True,
                             text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed (exit {out.returncode}): {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    def queued(self):
        """Job ids (array tasks as 12_3) still pending or running."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def state(self, job):
        out = self.run("scontrol", "-o", "show", "job", job, check=False).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return fields.get("JobState"), int(fields.get("Restarts", 0) or 0)

    def release(self, job):
        """A requeued job waits ~2 minutes before it may start again (SLURM's cool-down); start it now. Not
        within the second of the kill: slurmd refuses a launch whose credential is not newer (1 s resolution)
        than the one the kill revoked, and the task would end FAILED."""
        time.sleep(2)
        self.run("scontrol", "update", f"JobId={job}", "StartTime=now")

    def wait_idle(self, timeout):
        """Wait until no job is queued; False on timeout."""
        end = time.time() + timeout
        while time.time() < end:
            if not self.queued():
                return True
            time.sleep(0.5)
        return False

    def logs(self):
        """The daemons' log tails, for a failing test's message."""
        text = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = os.path.join(self.root, "log", name)
            if os.path.exists(path):
                with open(path) as f:
                    text.append(f"--- {name}\n" + "".join(f.readlines()[-15:]))
        return "\n".join(text)

    def stop(self, remove=False):
        """Cancel this cluster's jobs, stop slurmd and slurmctld by PID, then munged; remove: its folder too.
        Safe to call twice."""
        if self.procs and all(p.poll() is None for p in self.procs):
            try:
                self.run("scancel", "--full", "--user", str(os.getuid()), check=False, timeout=10)
                end = time.time() + 15
                while time.time() < end and self.queued():
                    time.sleep(0.5)
            except (OSError, subprocess.TimeoutExpired, RuntimeError):
                pass
        for p in reversed(self.procs):  # slurmd first, then slurmctld
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        self.procs = []
        time.sleep(0.5)
        if self.munged_pid:
            try:
                os.kill(self.munged_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.munged_pid = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def start(root=None, timeout=30):
    """Start munged, slurmctld and slurmd under root (a fresh temp folder by default); returns a Cluster whose
    node is idle. On failure everything started is stopped again and RuntimeError says why."""
    # a short path: the munge socket path must fit in a unix socket address (108 bytes)
    root = root or tempfile.mkdtemp(prefix="slurm-", dir="/tmp")
    for d in ("munge", "state", "spool", "log", "run"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "munge"), 0o711)
    c = Cluster(root)
    try:
        key = os.path.join(root, "munge", "munge.key")
        subprocess.run([sbin("mungekey"), "-c", "-k", key], check=True, capture_output=True, timeout=30)
        pid_file = os.path.join(root, "run", "munged.pid")
        subprocess.run([sbin("munged"), "--force", "-S", os.path.join(root, "munge", "munge.sock"),
                        f"--key-file={key}", f"--log-file={root}/log/munged.log", f"--pid-file={pid_file}",
                        f"--seed-file={root}/munge/munged.seed"], check=True, capture_output=True, timeout=30)
        for _ in range(50):
            if os.path.exists(pid_file):
                break
            time.sleep(0.1)
        with open(pid_file) as f:
            c.munged_pid = int(f.read().strip())
        probe = subprocess.run([sbin("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
        memory = int(probe.split("RealMemory=")[1].split()[0])
        with open(c.conf, "w") as f:
            f.write(slurm_conf(root, os.cpu_count() or 1, memory, free_port(), free_port()))
        log = lambda name: open(os.path.join(root, "log", name), "w")
        c.procs.append(subprocess.Popen([sbin("slurmctld"), "-D", "-f", c.conf], stdout=log("slurmctld.out"),
                                        stderr=subprocess.STDOUT, env=c.env))
        c.procs.append(subprocess.Popen([sbin("slurmd"), "-D", "-N", "localhost", "-f", c.conf],
                                        stdout=log("slurmd.out"), stderr=subprocess.STDOUT, env=c.env))
        end = time.time() + timeout
        while time.time() < end:
            if any(p.poll() is not None for p in c.procs):
                raise RuntimeError("a SLURM daemon exited at start-up")
            out = c.run("sinfo", "-h", "-o", "%T", check=False)
            if out.stdout.strip() == "idle":
                return c
            time.sleep(0.5)
        raise RuntimeError(f"the node did not become idle within {timeout}s")
    except Exception as e:
        detail = c.logs()
        c.stop()
        raise RuntimeError(f"could not start a SLURM cluster in {root}: {e}\n{detail}") from e


def slurm_conf(root, cpus, memory, ctld_port, slurmd_port):
    return f"""ClusterName=test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
EnforcePartLimits=ALL
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


if __name__ == "__main__":
    reason = install()
    if reason:
        sys.exit(f"error: {reason}")
    cluster = start(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"SLURM cluster running in {cluster.root}; in another shell:\n  export SLURM_CONF={cluster.conf}\n"
          f"Ctrl-C stops it.", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
