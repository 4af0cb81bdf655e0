"""`python -m hf_xladjust.experiments CONFIG.yaml [--dry_run] [--cluster local|slurm|debug] [--rerun GLOB]`

Runs (or, with --dry_run, prints) the whole grid of a configuration file; see hf_xladjust/experiments/__init__.py.
"""
import argparse
import fnmatch
import os
import signal
import sys

from hf_xladjust.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hf_xladjust.experiments",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="The experiment grid: adjustment, fine-tuning and zero-shot evaluation\n"
                                            "over tasks, languages, seeds and regimes, through submitit. Example:\n\n"
                                            "    python -m hf_xladjust.experiments examples/grid_paper.yaml "
                                            "--dry_run\n")
    p.add_argument("config", help="YAML or JSON configuration file.")
    p.add_argument("--dry_run", action="store_true",
                   help="Print every step's command and state and the time estimate (measured where steps have "
                        "run), then every problem found: model folders, each step's arguments against its "
                        "script, missing input files (exit status 1 if any); run nothing.")
    p.add_argument("--cluster", choices=("local", "slurm", "debug"), default=None,
                   help="Override executor.cluster of the configuration.")
    p.add_argument("--results_dir", default=None, help="Override results_dir of the configuration.")
    p.add_argument("--only", nargs="+", default=None, metavar="GLOB",
                   help="Run only the steps whose names match (e.g. 'nli/*/es/*'), and their unfinished dependencies.")
    p.add_argument("--rerun", nargs="+", default=(), metavar="GLOB",
                   help="Rerun these steps from scratch even if finished (e.g. after a code change), and every "
                        "step that depends on them.")
    p.add_argument("--wait", action="store_true", help="On Slurm, wait for the submitted jobs to end.")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from hf_xladjust.experiments.config import load_config
    from hf_xladjust.experiments.engine import estimate, format_estimate, plan_summary, run_plan, write_plan
    from hf_xladjust.experiments.plan import build_plan, dependents

    cfg = load_config(args.config)
    if args.cluster:
        cfg.executor.cluster = args.cluster
    if args.results_dir:
        cfg.results_dir = args.results_dir
    steps = all_steps = build_plan(cfg)
    results_dir = os.path.normpath(os.path.join(os.path.abspath(cfg.workdir or os.getcwd()), cfg.results_dir))
    names = [s.name for s in steps]

    def matching(globs):
        found = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
        unmatched = [g for g in globs if not any(fnmatch.fnmatchcase(n, g) for n in names)]
        if unmatched:
            raise InputError(f"no step matches {', '.join(unmatched)}; steps are named like {names[-1]}",
                             args.config)
        return found

    rerun = dependents(steps, matching(args.rerun)) if args.rerun else []
    if args.only:
        from hf_xladjust.experiments.runner import is_done
        chosen = set(matching(args.only))
        for step in reversed(steps):  # add unfinished dependencies
            if step.name in chosen:
                chosen.update(d for d in step.deps)
        by_name = {s.name: s for s in steps}
        chosen = {n for n in chosen if n in matching(args.only) or n in rerun or not is_done(by_name[n])}
        steps = [s for s in steps if s.name in chosen]

    from hf_xladjust.experiments.validate import plan_problems, raise_problems

    # Every problem of the configuration at once (model folders, arguments, input files); a dry run still
    # prints the plan and its estimate first, then the problems, and exits non-zero.
    problems = plan_problems(steps, cfg, os.path.abspath(cfg.workdir or os.getcwd()))
    if not args.dry_run:
        raise_problems(problems, cfg.source)
    print(f"Grid {cfg.source}: {len(steps)} steps, results in {results_dir}, executor {cfg.executor.cluster}")
    if args.dry_run:
        print(plan_summary(steps, cfg))
        print("\nEstimate\n" + format_estimate(estimate(steps)))
        sys.stdout.flush()
        raise_problems(problems, cfg.source)
        return 0

    plan_path = write_plan(all_steps, cfg, results_dir)
    print(f"Plan (every command, dependency and fingerprint): {plan_path}")

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill` stops the running step as Ctrl-C does
    try:
        outcome = run_plan(steps, cfg, results_dir, rerun=rerun, wait=args.wait)
    except KeyboardInterrupt:
        print("Stopped; run the same command again to continue.", flush=True)
        return 130
    counts = {}
    for state in outcome.values():
        key = state.split()[0]
        counts[key] = counts.get(key, 0) + 1
    print("Summary: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if cfg.executor.cluster != "slurm" or args.wait:
        print(f"Tables: python -m hf_xladjust.report {results_dir}")
    return 1 if counts.get("failed") or counts.get("blocked") else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as err:
        sys.exit(f"hf_xladjust.experiments: error: {err}")
