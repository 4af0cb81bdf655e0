"""One step of the grid as a job: run its command, and mark it finished only when its outputs are there.

Markers in the step's folder:
- `_STARTED.json`: the fingerprint the folder's content belongs to. A rerun with the same fingerprint
  continues from the last complete `checkpoint-N` (`--resume_from_checkpoint`); a different one empties
  the folder first, so outputs of other arguments never mix in.
- `_SUCCESS.json`: written atomically after the command exited with 0 and every expected output exists;
  removed before a step starts. A step without it is not finished, whatever else is in the folder.
A lock file keeps two jobs (e.g. a resubmission while the first is still queued) out of one folder.
"""
import contextlib
import ctypes
import dataclasses
import datetime
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Optional

import submitit

from hf_xladjust.experiments.plan import Step
from hf_xladjust.files import atomic_write, write_json

SUCCESS = "_SUCCESS.json"
STARTED = "_STARTED.json"
LOCK = ".grid.lock"
LOG = "grid_step.log"
KEEP_WHEN_RESTARTING = (LOCK, "alignment_cache")  # run_adjust.py's per-run alignment cache survives a rerun


class StepFailed(RuntimeError):
    pass


def read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_done(step: Step) -> bool:
    """Finished with the same fingerprint, and its outputs are still there."""
    marker = read_json(os.path.join(step.output_dir, SUCCESS))
    return (marker is not None and marker.get("fingerprint") == step.fingerprint
            and all(os.path.exists(os.path.join(step.output_dir, o)) for o in step.outputs))


def last_checkpoint(folder: str) -> Optional[str]:
    """The newest `checkpoint-N` whose trainer_state.json (the Trainer's last write) is complete."""
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
            if read_json(os.path.join(folder, name, "trainer_state.json")) is not None:
                found.append((int(name[len("checkpoint-"):]), name))
    return os.path.join(folder, max(found)[1]) if found else None


def _empty(folder: str, keep=(LOCK,)) -> None:
    for name in os.listdir(folder):
        if name in keep:
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


@contextlib.contextmanager
def _locked(folder: str):
    import fcntl

    with open(os.path.join(folder, LOCK), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:  # some network file systems have no locks: go on without
            logging.getLogger(__name__).warning("no lock on %s (%s)", folder, e)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _die_with_parent():
    """In the child: get SIGTERM when the job process dies, so a killed job leaves no orphan training."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _link(path: str, target: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rel = os.path.relpath(target, os.path.dirname(path))
    if os.path.islink(path):
        if os.readlink(path) == rel:
            return
        os.unlink(path)
    elif os.path.exists(path):
        raise StepFailed(f"{path} exists and is not a link; the grid links it to {target}")
    os.symlink(rel, path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_command(step: Step) -> str:
    path = os.path.join(step.output_dir, "command.sh")
    with atomic_write(path) as f:
        f.write(step.shell_script())
    os.chmod(path, 0o755)
    return path


def run_step(step: Step, force: bool = False) -> Dict[str, Any]:
    """Run one step to completion (or resume it); returns what happened. Raises StepFailed."""
    os.makedirs(step.output_dir, exist_ok=True)
    with _locked(step.output_dir):
        if not force and is_done(step):
            return {"step": step.name, "status": "skipped"}
        started = read_json(os.path.join(step.output_dir, STARTED))
        resume = None
        if force or started is None or started.get("fingerprint") != step.fingerprint:
            _empty(step.output_dir)
        else:
            resume = last_checkpoint(step.output_dir) if step.resume else None
            if resume is None:
                _empty(step.output_dir, keep=KEEP_WHEN_RESTARTING)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(step.output_dir, SUCCESS))
        write_command(step)
        job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or str(os.getpid())
        write_json(os.path.join(step.output_dir, STARTED),
                   {"fingerprint": step.fingerprint, "step": step.name, "started": _now(),
                    "host": socket.gethostname(), "job_id": job_id, "resumed_from": resume})

        argv = step.command + (["--resume_from_checkpoint", resume] if resume else [])
        env = {**os.environ, **{k: str(v) for k, v in step.env.items()}}
        t0 = time.time()
        log_path = os.path.join(step.output_dir, LOG)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n### {_now()} {step.name}: {step.shell_command(argv[len(step.command):])}\n")
            log.flush()
            proc = subprocess.Popen(argv, cwd=step.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            try:
                rc = proc.wait()
            except BaseException:  # a signal or Ctrl-C in the job: stop the command too
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
                proc.kill()
                raise
        wall = time.time() - t0
        if rc != 0:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = "".join(f.readlines()[-25:])
            raise StepFailed(f"step {step.name} failed (exit status {rc}) after {wall:.0f} s; "
                             f"log {log_path}, command {os.path.join(step.output_dir, 'command.sh')}:\n{tail}")
        missing = [o for o in step.outputs if not os.path.exists(os.path.join(step.output_dir, o))]
        if missing:
            raise StepFailed(f"step {step.name} exited with 0 but did not write {', '.join(missing)} "
                             f"in {step.output_dir}")
        for link in step.links:
            _link(link, step.output_dir)
        if not step.keep_checkpoints:
            for name in os.listdir(step.output_dir):
                if name.startswith("checkpoint-"):
                    shutil.rmtree(os.path.join(step.output_dir, name), ignore_errors=True)
        record = {"fingerprint": step.fingerprint, "step": step.name, "command": step.command,
                  "resumed_from": resume, "started": started_at(t0), "finished": _now(),
                  "wall_seconds": round(wall, 2), "host": socket.gethostname(), "job_id": job_id,
                  "resources": dataclasses.asdict(step.resources),
                  "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        write_json(os.path.join(step.output_dir, SUCCESS), record)  # the very last write
        return {"step": step.name, "status": "resumed" if resume else "ran", "wall_seconds": round(wall, 2)}


def started_at(t0: float) -> str:
    return datetime.datetime.fromtimestamp(t0, datetime.timezone.utc).isoformat(timespec="seconds")


class StepJob(submitit.helpers.Checkpointable):
    """What submitit runs. On a Slurm time-out or pre-emption submitit calls `checkpoint()` and requeues
    the job; the requeued run finds the same fingerprint and continues from the last checkpoint."""

    def __init__(self, step: Dict[str, Any], force: bool = False):
        self.step = step
        self.force = force

    def __call__(self) -> Dict[str, Any]:
        if os.environ.get("SUBMITIT_EXECUTOR") == "local" and sys.platform.startswith("linux"):
            # under the local executor: die with its controller, which the grid kills when it is stopped
            # (submitit's job process ignores SIGTERM); the command then follows through its own death signal
            with contextlib.suppress(Exception):
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        force, self.force = self.force, False  # a requeued run resumes instead of starting over
        return run_step(Step.from_dict(self.step), force=force)
