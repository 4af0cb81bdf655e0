"""The grid on a real Slurm cluster (slow): a one-node cluster of Debian's slurm-wlm and munge started here
(munged, slurmctld, slurmd as root, configuration, key, state and logs in a temporary folder), a tiny grid
(adjustment -> NLI fine-tuning, tiny BERT) submitted through submitit with `afterok` dependencies, one job
cancelled mid-run and the grid's rerun resuming it, against the same grid run uninterrupted.

Skipped where the daemons are not installed (`.ci/install-slurm` installs them; `.ci/run` calls it) or do
not start (the reason ends with the daemons' log tails)."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from test_experiments import OFFLINE, ROOT, grid_yaml, metrics

from hf_xladjust.experiments.runner import SUCCESS

pytestmark = pytest.mark.slow

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
PARTITION = "xltest"
CRED_EXPIRE = 10


class Cluster:
    """munged, slurmctld and slurmd in the foreground, each a child of this process, killed on stop()."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.procs = {}
        for sub in ("state", "spool", "log", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self):
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        host = socket.gethostname().split(".")[0]
        with open("/proc/meminfo") as f:
            mem_mb = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) // 1024
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=xltest", f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            # cred_expire: also how long Slurm holds a requeued job back (120 s by default)
            f"AuthInfo=socket={r}/run/munge.socket,cred_expire={CRED_EXPIRE}",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/run/slurmctld.pid", f"SlurmdPidFile={r}/run/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            # no cgroups: processes tracked through /proc, no task binding, no accounting (sacct answers nothing)
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "MpiDefault=none", "SwitchType=switch/none", "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2",
            "KillWait=5", "MinJobAge=3600", "MailProg=/bin/true",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mb * 9 // 10} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))

    def start(self):
        r = self.root
        commands = {
            "munged": ["munged", "--foreground", "--force", f"--key-file={r}/munge.key",
                       f"--socket={r}/run/munge.socket", f"--pid-file={r}/run/munged.pid",
                       f"--log-file={r}/log/munged.log", f"--seed-file={r}/run/munged.seed"],
            "slurmctld": ["slurmctld", "-D", "-f", str(self.conf)],
            "slurmd": ["slurmd", "-D", "-f", str(self.conf)],
        }
        for name, argv in commands.items():
            out = open(r / "log" / f"{name}.stdout", "w")
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            out.close()
            if name == "munged":
                self._wait(lambda: (r / "run" / "munge.socket").exists(), 20, "munged made no socket")
        self._wait(lambda: self.sinfo() == "idle", 60, "the node did not become idle")

    def _wait(self, ready, seconds, what):
        deadline = time.time() + seconds
        while time.time() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(what)

    def sinfo(self):
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return done.stdout.strip()

    def log_tails(self, lines=8):
        tails = []
        for path in sorted((self.root / "log").iterdir()):
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                tails.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(tails)

    def stop(self):
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--partition", PARTITION], env=self.env, capture_output=True)
            deadline = time.time() + 30
            while time.time() < deadline and self.jobs():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # --- queries ---
    def jobs(self):
        done = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
        return set(done.stdout.split())

    def job(self, job_id):
        """`scontrol show job` as a dict (Dependency, JobState, Partition, Comment...)."""
        done = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], env=self.env, capture_output=True,
                              text=True, check=True)
        return dict(re.findall(r"(\w+)=(\S*)", done.stdout))

    def wait_for(self, job_ids, seconds=900):
        deadline = time.time() + seconds
        while self.jobs() & set(job_ids):
            left = sorted(self.jobs() & set(job_ids))
            assert time.time() < deadline, f"jobs {left} still queued\n{self.log_tails()}"
            time.sleep(1)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no Slurm here ({', '.join(missing)} not found); `bash .ci/install-slurm` installs Debian's "
                    "slurmctld, slurmd, slurm-client and munge (as root)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root (SlurmUser=root)")
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    saved = os.environ.get("SLURM_CONF")
    try:
        cluster.write_config()
        cluster.start()
    except (OSError, RuntimeError) as e:
        cluster.stop()
        pytest.skip(f"the one-node Slurm cluster did not start ({e}); logs:\n{cluster.log_tails()}")
    os.environ["SLURM_CONF"] = str(cluster.conf)  # sbatch, squeue, scancel, and so submitit, find the cluster
    try:
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


def diagonal_alignment(parallel_file, out):
    """A Pharaoh file linking word i to word i: deterministic, unlike eflomal, so two results folders
    start from the same pairs."""
    lines = []
    for line in Path(parallel_file).read_text(encoding="utf-8").splitlines():
        src, tgt = line.split(" ||| ")
        lines.append(" ".join(f"{i}-{i}" for i in range(min(len(src.split()), len(tgt.split())))))
    out.write_text("\n".join(lines) + "\n")
    return str(out)


def slurm_grid(tmp_path, model, results):
    """The test grid of test_experiments.py cut to one chain, adjust/es/seed0 -> nli/adjusted/es/seed0,
    submitted to the test cluster: 1 CPU and 1 GB per step, a comment and a setup line to find again."""
    cfg = yaml.safe_load(Path(grid_yaml(tmp_path, model, results, [0])).read_text())
    cfg["regimes"] = ["adjusted"]
    cfg["alignment"] = {"files": {"es": diagonal_alignment(cfg["parallel"]["es"], tmp_path / "es.pharaoh")}}
    resources = {"gpus": 0, "cpus": 1, "mem_gb": 1, "hours": 0.25}
    cfg["adjust"]["resources"] = resources
    cfg["tasks"]["nli"]["resources"] = {**resources, "partition": PARTITION}
    cfg["tasks"]["nli"]["args"]["num_train_epochs"] = 2  # 12 steps, a checkpoint every 2: time to cancel it
    cfg["env"] = {**cfg["env"], "OMP_NUM_THREADS": "1"}  # one thread per step: the two folders' numbers agree
    cfg["executor"] = {"cluster": "slurm", "slurm": {"comment": "hf-xladjust-test"},
                       "setup": ["echo grid-setup-line-ran"]}
    path = tmp_path / f"{results.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def submit(config, *extra):
    """Run the grid command (it returns once everything is queued, or with --wait once it has run); its output
    and step name -> (job id, [after job ids])."""
    proc = subprocess.run([sys.executable, "-m", "hf_xladjust.experiments", config, *extra], cwd=ROOT,
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, {name: (job, after.split(",") if after else [])
                         for name, job, after in re.findall(r"\[queued\]\s+(\S+): job (\d+)(?: after (\S+))?",
                                                            proc.stdout)}


def test_grid_on_slurm_dependencies_cancel_and_resume(slurm_cluster, tmp_path, tiny_model_dir):
    cluster = slurm_cluster
    ref, res = tmp_path / "reference", tmp_path / "results"
    t0 = time.time()
    _, ref_jobs = submit(slurm_grid(tmp_path, tiny_model_dir, ref))
    config = slurm_grid(tmp_path, tiny_model_dir, res)
    _, jobs = submit(config)
    assert list(jobs) == ["adjust/es/seed0", "nli/adjusted/es/seed0"]
    adjust_job, nli_job = jobs["adjust/es/seed0"][0], jobs["nli/adjusted/es/seed0"][0]
    assert jobs["nli/adjusted/es/seed0"][1] == [adjust_job] and jobs["adjust/es/seed0"][1] == []

    # what Slurm holds: the fine-tuning waits on the adjustment's success, in its partition, with the options
    nli = cluster.job(nli_job)
    assert nli["Dependency"].startswith(f"afterok:{adjust_job}"), nli["Dependency"]
    assert nli["JobState"] == "PENDING" and nli["Reason"] == "Dependency"
    assert nli["Partition"] == PARTITION and nli["Comment"] == "hf-xladjust-test"
    assert nli["TimeLimit"] == "00:15:00" and nli["NumCPUs"] == "1"
    # (the reference's adjustment may be over by now, and Slurm then shows no dependency: its submission line)
    assert ref_jobs["nli/adjusted/es/seed0"][1] == [ref_jobs["adjust/es/seed0"][0]]

    # cancel the fine-tuning once it has a complete checkpoint
    target = res / "nli/adjusted/es/seed0"
    deadline = time.time() + 600
    while not list(target.glob("checkpoint-*/trainer_state.json")):
        assert time.time() < deadline and nli_job in cluster.jobs(), cluster.log_tails()
        time.sleep(0.05)
    subprocess.run(["scancel", nli_job], env=cluster.env, check=True)
    cluster.wait_for([nli_job] + [j for j, _ in ref_jobs.values()])
    t_first = time.time() - t0
    assert cluster.job(nli_job)["JobState"] == "CANCELLED"
    assert not (target / SUCCESS).exists() and (res / "adjust/es/seed0" / SUCCESS).is_file()
    for name in ref_jobs:
        assert (ref / name / SUCCESS).is_file(), name
    started = json.loads((target / "_STARTED.json").read_text())
    assert started["job_id"] == nli_job  # it ran as that Slurm job
    log = (res / "_submitit" / f"{adjust_job}_0_log.out").read_text()
    assert "grid-setup-line-ran" in log

    # the same command again: the finished adjustment is skipped, the fine-tuning resubmitted and resumed
    # (--wait: followed through submitit, which finds the job's result file; sacct has no accounting here)
    t1 = time.time()
    out, again = submit(config, "--wait")
    assert "[done]    adjust/es/seed0" in out and list(again) == ["nli/adjusted/es/seed0"]
    assert "Summary: 1 done, 1 ran" in out, out[-2000:]
    assert again["nli/adjusted/es/seed0"][1] == []  # nothing left to wait for
    cluster.wait_for([again["nli/adjusted/es/seed0"][0]])
    t_rerun = time.time() - t1
    marker = json.loads((target / SUCCESS).read_text())
    assert marker["job_id"] == again["nli/adjusted/es/seed0"][0]
    assert re.search(r"/checkpoint-\d+$", marker["resumed_from"] or ""), marker
    out, _ = submit(config)
    assert "Summary: 2 done" in out  # a third call submits nothing

    # against the uninterrupted grid in the other folder: the same pairs, weights and predictions
    compared = []
    for step in ("adjust/es/seed0", "nli/adjusted/es/seed0"):
        for path in sorted((ref / step).iterdir()):
            name = path.name
            if name.startswith("predictions_") or name in ("model.safetensors", "aligned_pairs.jsonl"):
                assert (res / step / name).read_bytes() == path.read_bytes(), f"{step}/{name}"
                compared.append(f"{step}/{name}")
    assert any("predictions_" in c for c in compared) and len(compared) >= 4, compared
    assert metrics(target / "all_results.json", resumed=True) == metrics(ref / "nli/adjusted/es/seed0" /
                                                                         "all_results.json", resumed=True)
    print(f"\nslurm grid: first submission to cancel and reference done {t_first:.0f} s, rerun {t_rerun:.0f} s; "
          f"compared {', '.join(compared)}")


def test_slurm_time_out_signal_requeues_and_resumes(slurm_cluster, tmp_path, tiny_model_dir):
    """Slurm's warning before a time limit (submitit's `--signal=USR2@90`; pre-emption sends the same) while the
    fine-tuning runs: submitit requeues the job and the requeued run resumes from the last checkpoint, with no
    rerun of the grid."""
    cluster = slurm_cluster
    res = tmp_path / "results"
    _, jobs = submit(slurm_grid(tmp_path, tiny_model_dir, res))
    nli_job = jobs["nli/adjusted/es/seed0"][0]
    target = res / "nli/adjusted/es/seed0"
    deadline = time.time() + 600
    while not list(target.glob("checkpoint-*/trainer_state.json")):
        assert time.time() < deadline and nli_job in cluster.jobs(), cluster.log_tails()
        time.sleep(0.05)
    t0 = time.time()
    subprocess.run(["scancel", "--signal=USR2", nli_job], env=cluster.env, check=True)
    while int(cluster.job(nli_job)["Restarts"]) == 0 or cluster.job(nli_job)["JobState"] != "PENDING":
        assert time.time() < t0 + 60 and nli_job in cluster.jobs(), cluster.log_tails()
        time.sleep(0.2)
    # a requeued job may start once its first run's credential has expired; then schedule it at once
    time.sleep(CRED_EXPIRE + 2)
    subprocess.run(["scontrol", "update", f"JobId={nli_job}", "StartTime=now"], env=cluster.env, check=True)
    cluster.wait_for([nli_job])
    print(f"\nrequeued job ended {time.time() - t0:.0f} s after the signal")
    info = cluster.job(nli_job)
    log = "".join(p.read_text(errors="replace") for p in sorted((res / "_submitit").glob(f"{nli_job}_*")))
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) >= 1, (info, log[-3000:])
    marker = json.loads((target / SUCCESS).read_text())
    assert re.search(r"/checkpoint-\d+$", marker["resumed_from"] or ""), (marker, log[-3000:])



def test_a_partition_slurm_does_not_have_is_one_line(slurm_cluster, tmp_path, tiny_model_dir):
    """sbatch's refusal comes back as one `[refused]` line with Slurm's own words, and nothing is queued
    behind it (the grid used to stop there with submitit's traceback)."""
    config = slurm_grid(tmp_path, tiny_model_dir, tmp_path / "results")
    cfg = yaml.safe_load(Path(config).read_text())
    cfg["adjust"]["resources"]["partition"] = "nope"
    Path(config).write_text(yaml.safe_dump(cfg))
    before = slurm_cluster.jobs()
    proc = subprocess.run([sys.executable, "-m", "hf_xladjust.experiments", config], cwd=ROOT,
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[refused] adjust/es/seed0: sbatch: error: invalid partition specified: nope" in proc.stdout
    assert "[blocked] nli/adjusted/es/seed0 (needs adjust/es/seed0)" in proc.stdout
    assert "Traceback" not in proc.stderr and slurm_cluster.jobs() == before



def test_wait_ends_when_slurm_cancels_a_job_that_never_ran(slurm_cluster, tmp_path, tiny_model_dir):
    """--wait with both jobs cancelled at once (the fine-tuning before it ran): the command ends, the steps
    failed. On this cluster sacct has no accounting, and submitit alone would wait forever."""
    config = slurm_grid(tmp_path, tiny_model_dir, tmp_path / "results")
    proc = subprocess.Popen([sys.executable, "-m", "hf_xladjust.experiments", config, "--wait"], cwd=ROOT,
                            env={**os.environ, **OFFLINE}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 120
        while len(slurm_cluster.jobs()) < 2:
            assert time.time() < deadline and proc.poll() is None, slurm_cluster.log_tails()
            time.sleep(0.1)
        subprocess.run(["scancel", *sorted(slurm_cluster.jobs())], env=slurm_cluster.env, check=True)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-3000:]
    assert re.search(r"\[failed\]  nli/adjusted/es/seed0: job \d+ ended without a result", out), out[-3000:]
    assert "Summary: 2 failed" in out
