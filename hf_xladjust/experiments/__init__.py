"""The experiment grid of the paper as one command: `python -m hf_xladjust.experiments CONFIG.yaml`.

Steps (each a command line saved as `command.sh` in its folder and in `RESULTS/plan.json`):
- `align/{lang}`: word-align the language's parallel corpus once (shared by all seeds);
- `adjust/{lang}/seed{n}`: stage 1, `run_adjust.py` with that seed;
- `adjust_n{size}/{lang}/seed{n}`: the same with `--max_sentences size`, one per `parallel_sizes` entry
  (regime `adjusted_n{size}`);
- `adjust/multi/seed{n}`: one `run_adjust.py --parallel` over every language (regime `adjusted_multi`);
- `transform/{regime}/{key}/{lang}/seed{n}`: `rotation` / `normalized` fitted on the Original fine-tuned
  model of task `key` (`start`: the start model of an evaluation-only task);
- `{task}/{regime}/{lang}/seed{n}`: fine-tune on English with that seed and evaluate zero-shot. The
  original model is fine-tuned once per seed for all languages (`{task}/original/all/seed{n}`, with
  `{lang}/seed{n}` links to it), and so is the multi-language adjusted one (`{task}/adjusted_multi/all/`);
  adjusted regimes start from their adjust step; rotation and normalized evaluate the Original run
  (`--do_train false`) through the fitted transform (`--representation_transform`).
Jobs go through submitit (local executor, Slurm with afterok dependencies, or debug); finished steps
(same fingerprint, outputs present) are skipped, killed ones resume from their last checkpoint.
"""
from hf_xladjust.experiments.config import GridConfig, load_config, parse_config
from hf_xladjust.experiments.plan import Step, build_plan

__all__ = ["GridConfig", "Step", "build_plan", "load_config", "parse_config"]
