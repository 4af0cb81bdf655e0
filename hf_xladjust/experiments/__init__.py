"""The experiment grid of the paper as one command: `python -m hf_xladjust.experiments CONFIG.yaml`.

Steps (each a command line saved as `command.sh` in its folder and in `RESULTS/plan.json`):
- `align/{lang}`: word-align the language's parallel corpus once (shared by all seeds);
- `adjust/{lang}/seed{n}`: stage 1, `run_adjust.py` with that seed;
- `{task}/{regime}/{lang}/seed{n}`: fine-tune on English with that seed and evaluate zero-shot. The
  original model is fine-tuned once per seed for all languages (`{task}/original/all/seed{n}`, with
  `{lang}/seed{n}` links to it); adjusted regimes start from `adjust/{lang}/seed{n}`.
Jobs go through submitit (local executor, Slurm with afterok dependencies, or debug); finished steps
(same fingerprint, outputs present) are skipped, killed ones resume from their last checkpoint.
"""
from hf_xladjust.experiments.config import GridConfig, load_config, parse_config
from hf_xladjust.experiments.plan import Step, build_plan

__all__ = ["GridConfig", "Step", "build_plan", "load_config", "parse_config"]
