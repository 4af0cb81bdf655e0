"""Running the plan through submitit, and the --dry_run estimate of GPU-hours.

Locally (`cluster: local`) each unfinished step is one submitit LocalExecutor job, run one after
another, each waited for. On Slurm (`cluster: slurm`) every unfinished step is submitted at once, a
step with unfinished dependencies as `--dependency=afterok:<their job ids>`, so the adjustments run
first and the fine-tunings after them; the command returns once everything is queued (--wait to
follow the jobs). A step that sbatch refuses (a partition or account Slurm does not know, a limit) is
reported with Slurm's message and its dependents are not submitted; the other steps are. `debug` runs the
jobs in this process (submitit's DebugExecutor).
"""
import dataclasses
import json
import os
import shlex
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence, Set

import submitit

from hf_xladjust.experiments.config import GridConfig
from hf_xladjust.experiments.plan import Step
from hf_xladjust.experiments.runner import SUCCESS, StepJob, is_done, read_json, write_command
from hf_xladjust.files import write_json


def executor_parameters(step: Step, cfg: GridConfig, after: Sequence[str] = ()) -> Dict[str, Any]:
    """submitit parameters of one step: its resources, and on Slurm its afterok dependencies."""
    r = step.resources
    params: Dict[str, Any] = {"name": step.name.replace("/", "-"), "timeout_min": max(1, int(round(r.hours * 60))),
                              "gpus_per_node": r.gpus, "cpus_per_task": r.cpus, "mem_gb": r.mem_gb,
                              "tasks_per_node": 1, "nodes": 1}
    if cfg.executor.cluster == "slurm":
        extra = {**cfg.executor.slurm, **r.slurm}
        if after:
            extra["dependency"] = "afterok:" + ":".join(after)
            extra.setdefault("kill-on-invalid-dep", "yes")
        params["slurm_additional_parameters"] = extra
        if r.partition:
            params["slurm_partition"] = r.partition
        if cfg.executor.setup:
            params["slurm_setup"] = list(cfg.executor.setup)
    return params


# executor_parameters' names -> sbatch's, as submitit's Slurm executor translates them
_SBATCH_NAMES = {"name": "job-name", "timeout_min": "time", "gpus_per_node": "gpus-per-node",
                 "cpus_per_task": "cpus-per-task", "mem_gb": "mem", "tasks_per_node": "ntasks-per-node",
                 "nodes": "nodes", "slurm_partition": "partition"}


def sbatch_options(step: Step, cfg: GridConfig, after: Sequence[str] = ()) -> List[str]:
    """The `--key=value` options submitit writes into the step's sbatch script (less its log paths, signal and
    wckey), for --dry_run."""
    params = executor_parameters(step, cfg, after)
    options = {}
    for key, value in params.items():
        if key in _SBATCH_NAMES:
            if key == "mem_gb":  # submitit: whole GB as "NGB", else MB
                value = f"{int(value)}GB" if value == int(value) else f"{int(value * 1024)}MB"
            options[_SBATCH_NAMES[key]] = value
    options.update({k.replace("_", "-"): v for k, v in params.get("slurm_additional_parameters", {}).items()})
    return [f"--{k}" if v is True else f"--{k}={shlex.quote(str(v))}" for k, v in sorted(options.items())]


def make_executor(cfg: GridConfig, folder: str):
    return submitit.AutoExecutor(folder=folder, cluster=cfg.executor.cluster)


def write_plan(steps: List[Step], cfg: GridConfig, results_dir: str) -> str:
    """RESULTS/plan.json (every step, its command, dependencies and fingerprint) and each step's command.sh."""
    path = os.path.join(results_dir, "plan.json")
    write_json(path, {"config": cfg.source, "steps": [s.to_dict() for s in steps]})
    for step in steps:
        if not is_done(step):
            os.makedirs(step.output_dir, exist_ok=True)
            write_command(step)
    return path


def _last_line(step: Step, error: Exception) -> str:
    """The step's own last words (e.g. `run_glue_xl.py: error: ...`), else the job's error."""
    try:
        with open(os.path.join(step.output_dir, "grid_step.log"), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        if lines and not lines[-1].startswith("###"):
            return lines[-1]
    except OSError:
        pass
    text = str(error).strip()
    return text.splitlines()[-1] if text else repr(error)


def run_plan(steps: List[Step], cfg: GridConfig, results_dir: str, rerun: Sequence[str] = (),
             wait: bool = False, log=print) -> Dict[str, str]:
    """Run (local/debug) or submit (slurm) every unfinished step; returns step name -> outcome."""
    folder = cfg.executor.folder or os.path.join(results_dir, "_submitit")
    outcome: Dict[str, str] = {}
    jobs: Dict[str, Any] = {}
    local = cfg.executor.cluster != "slurm"
    for step in steps:
        forced = step.name in rerun
        if not forced and is_done(step):
            outcome[step.name] = "done"
            log(f"[done]    {step.name}")
            continue
        blocked = [d for d in step.deps if outcome.get(d) in ("failed", "blocked")]
        if blocked:
            outcome[step.name] = "blocked"
            log(f"[blocked] {step.name} (needs {', '.join(blocked)})")
            continue
        after = [jobs[d].job_id for d in step.deps if d in jobs and not local]
        # a new executor per step: one keeps its parameters between submissions and takes None for "unchanged",
        # so a step without a partition would go to the previous step's
        executor = make_executor(cfg, folder)
        executor.update_parameters(**executor_parameters(step, cfg, after))
        log(f"[run]     {step.name}\n          {step.shell_command()}")
        try:
            job = executor.submit(StepJob(step.to_dict(), force=forced))
        except submitit.core.utils.FailedJobError as e:  # sbatch refused it (partition, account, limits...)
            outcome[step.name] = "failed"
            log(f"[refused] {step.name}: {' / '.join(line for line in str(e).splitlines() if line.strip())}")
            continue
        jobs[step.name] = job
        if local:
            try:
                result = job.result()
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the running step too (it resumes next time)
                process = getattr(job, "_process", None)
                if process is not None:
                    process.kill()
                else:
                    job.cancel()
                log(f"[stopped] {step.name}")
                raise
            except Exception as e:  # the job's StepFailed comes back as a submitit FailedJobError
                outcome[step.name] = "failed"
                log(f"[failed]  {step.name}: {_last_line(step, e)}\n"
                    f"          log: {os.path.join(step.output_dir, 'grid_step.log')}, submitit: {job.paths.stderr}")
                continue
            outcome[step.name] = result["status"]
            took = f" in {result['wall_seconds']:.0f} s" if "wall_seconds" in result else ""
            log(f"[{result['status']}]{' ' * max(1, 8 - len(result['status']))} {step.name}{took}")
        else:
            outcome[step.name] = f"submitted {job.job_id}"
            log(f"[queued]  {step.name}: job {job.job_id}"
                + (f" after {','.join(after)}" if after else ""))
    if not local:
        write_json(os.path.join(folder, "slurm_jobs.json"),
                   {name: getattr(job, "job_id", None) for name, job in jobs.items()})
        if wait:
            outcome.update(wait_for_jobs(jobs, log))
    return outcome


# squeue's states of a job that has not ended
_ACTIVE = ("PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,REQUEUE_HOLD,REQUEUE_FED,RESIZING,"
           "SIGNALING,STAGE_OUT")


def queued_jobs(job_ids: Sequence[str]) -> Optional[Set[str]]:
    """Those of `job_ids` that Slurm has not ended (squeue); None when squeue does not answer."""
    try:
        done = subprocess.run(["squeue", "-h", "-o", "%i", "-t", _ACTIVE, "-j", ",".join(job_ids)],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:  # every id forgotten already (MinJobAge) reads as an error
        return set() if "Invalid job id" in done.stderr else None
    return set(done.stdout.split())


def wait_for_jobs(jobs: Dict[str, Any], log=print, poll: float = 10.0) -> Dict[str, str]:
    """--wait: each submitted step's outcome once its job has ended. submitit learns that a job ended from its
    result file or from sacct; a job cancelled before it ran (e.g. by Slurm after a failed dependency) has no
    result file, and on a cluster without accounting sacct never reports it: squeue, asked as well, does."""
    outcome: Dict[str, str] = {}
    pending, absent = dict(jobs), set()
    while pending:
        queued = queued_jobs([job.job_id for job in pending.values()])
        for name, job in list(pending.items()):
            if job.done():
                try:
                    job.result()
                    outcome[name] = "ran"
                except Exception as e:
                    outcome[name] = "failed"
                    log(f"[failed]  {name}: {e}")
            elif queued is not None and job.job_id not in queued:
                if job.job_id not in absent:  # once more: its result file may still be on its way (NFS)
                    absent.add(job.job_id)
                    continue
                outcome[name] = "failed"
                log(f"[failed]  {name}: job {job.job_id} ended without a result (cancelled before it ran, or after "
                    f"a failed dependency); submitit's log: {job.paths.stderr}")
            else:
                absent.discard(job.job_id)  # queued again (requeued)
                continue
            del pending[name]
        if pending:
            time.sleep(poll)
    return outcome


# --- dry run: the plan and an estimate of GPU-hours --------------------------------------------------

def _kind(step: Step) -> str:
    """Steps of one kind take about the same time: same script, regime type and scope."""
    if step.kind == "adjust" and step.regime not in (None, "adjusted"):
        return f"adjust ({step.regime})"  # the multi-language run, or another sample size
    if step.kind == "transform":
        return f"transform ({step.regime})"
    if step.kind != "task":
        return step.kind
    scope = "all languages" if step.lang == "all" else "one language"
    return f"{step.task}/{step.regime} ({scope})"


def measured_seconds(step: Step) -> Optional[Dict[str, Any]]:
    """What a finished step took: wall time from its _SUCCESS.json, and the Trainer's throughput."""
    marker = read_json(os.path.join(step.output_dir, SUCCESS))
    if marker is None or "wall_seconds" not in marker:
        return None
    out = {"wall_seconds": marker["wall_seconds"], "gpus": marker.get("resources", {}).get("gpus", 0)}
    train = read_json(os.path.join(step.output_dir, "train_results.json")) or {}
    for key in ("train_runtime", "train_samples_per_second", "train_samples"):
        if key in train:
            out[key] = train[key]
    return out


def estimate(steps: List[Step]) -> Dict[str, Any]:
    """GPU-hours per step kind: measured wall time of finished steps of that kind where there are any,
    otherwise the config's `est_hours` (an assumption), otherwise unknown."""
    rows: Dict[str, Dict[str, Any]] = {}
    for step in steps:
        row = rows.setdefault(_kind(step), {"steps": 0, "todo": 0, "measured": [], "gpus": step.resources.gpus,
                                            "est_hours": step.resources.est_hours, "samples_per_second": []})
        row["steps"] += 1
        done = is_done(step)
        row["todo"] += not done
        m = measured_seconds(step) if done else None
        if m:
            row["measured"].append(m["wall_seconds"])
            if "train_samples_per_second" in m:
                row["samples_per_second"].append(m["train_samples_per_second"])
    totals = {"hours": 0.0, "hours_todo": 0.0, "gpu_hours": 0.0, "gpu_hours_todo": 0.0}
    unknown = []
    for kind, row in rows.items():
        if row["measured"]:
            hours = sum(row["measured"]) / len(row["measured"]) / 3600
            row["source"] = f"measured (mean of {len(row['measured'])} finished step(s))"
        elif row["est_hours"] is not None:
            hours = row["est_hours"]
            row["source"] = "assumed (config est_hours)"
        else:
            row["source"] = "unknown: no finished step and no est_hours"
            unknown.append(kind)
            hours = None
        row["hours_per_step"] = hours
        for key, n in (("hours", row["steps"]), ("hours_todo", row["todo"])):
            row[key] = None if hours is None else hours * n
            row["gpu_" + key] = None if hours is None else hours * n * row["gpus"]
            if hours is not None:
                totals[key] += row[key]
                totals["gpu_" + key] += row["gpu_" + key]
    return {"kinds": rows, **totals, "unknown": unknown}


def format_estimate(est: Dict[str, Any]) -> str:
    lines = ["| step kind | steps | to run | GPUs/step | hours/step | hours (all) | GPU-hours (all) | "
             "GPU-hours (to run) | source |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def h(x):
        return "?" if x is None else f"{x:.3g}"
    for kind, r in est["kinds"].items():
        sps = (f"; {sum(r['samples_per_second']) / len(r['samples_per_second']):.3g} train samples/s"
               if r["samples_per_second"] else "")
        lines.append(f"| {kind} | {r['steps']} | {r['todo']} | {r['gpus']} | {h(r['hours_per_step'])} | "
                     f"{h(r['hours'])} | {h(r['gpu_hours'])} | {h(r['gpu_hours_todo'])} | {r['source']}{sps} |")
    lines.append(f"\nTotal: {est['hours']:.3g} step-hours run one after another ({est['hours_todo']:.3g} still to "
                 f"run); {est['gpu_hours']:.3g} GPU-hours ({est['gpu_hours_todo']:.3g} still to run; "
                 "steps without GPUs count 0).")
    if est["unknown"]:
        lines.append(f"Not counted (no measurement, no est_hours): {', '.join(est['unknown'])}.")
    lines.append("Measured hours are wall times of finished steps (start to end, loading included) on the "
                 "machine that ran them (host and GPUs in their _SUCCESS.json); assumed ones are the "
                 "configuration's est_hours.")
    return "\n".join(lines)


def plan_summary(steps: List[Step], cfg: Optional[GridConfig] = None) -> str:
    """Every step's state and command; on Slurm also its sbatch options (a dependency names the steps whose
    job ids it will wait for) and, once, the setup lines each job runs first."""
    slurm = cfg is not None and cfg.executor.cluster == "slurm"
    lines = []
    if slurm and cfg.executor.setup:
        lines.append("# every Slurm job first runs: " + "; ".join(cfg.executor.setup))
    to_run = set()
    for step in steps:
        done = is_done(step)
        deps = f"  (after {', '.join(step.deps)})" if step.deps else ""
        lines.append(f"# {step.name} [{'done' if done else 'to run'}] fingerprint {step.fingerprint}{deps}")
        if slurm and not done:
            after = [d for d in step.deps if d in to_run]
            lines.append("# sbatch " + " ".join(sbatch_options(step, cfg, after)))
            to_run.add(step.name)
        lines.append(step.shell_command())
    return "\n".join(lines)


def plan_json(steps: List[Step]) -> str:
    return json.dumps([dataclasses.asdict(s) for s in steps], indent=2)
