"""The experiment suite: multiscale vs single-output, lower-resolution entry, diffusion vs the
deterministic baseline, sampler cost vs quality, on the test split of the embedded mni152 set.

  python tools/suite.py --out=runs/suite --readme=README.md     # the full suite (hours here)
  python tools/suite.py --out=/tmp/suite --quick                # CI-sized (tiny config)

Trains the arms the experiments need (tools/harness/: the experiments in registry.py, their
arms and evaluations in design.py), exports them, runs tools/evaluate.py for every setting,
and writes experiments/<date>_<name>/{results.json, <name>.png, README.md} per
experiment plus experiments/<date>_suite/{table.md, suite.json}; with --readme, the block
between `<!-- suite:begin -->` and `<!-- suite:end -->` gets the tables. Rerunning resumes:
finished training and evaluations are kept.
"""

import datetime
import sys
from pathlib import Path

from absl import app, flags
from harness import plan, results
from harness.registry import DEFAULT_EXPERIMENTS, EXPERIMENTS

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Run folder (workdirs, evaluation reports, logs).")
flags.DEFINE_bool("quick", False, "CI-sized: the tiny config, 3 steps, one test case.")
flags.DEFINE_string(
    "results",
    None,
    "Where the experiment folders go (default: experiments/; with --quick: <out>/experiments).",
)
flags.DEFINE_string("date", None, "Date prefix of the experiment folders (default: today, UTC).")
flags.DEFINE_string("data", "mni152", "Dataset SPEC whose test split is scored.")
flags.DEFINE_integer("steps", 0, "Training steps per arm (0: 3000, or 3 with --quick).")
flags.DEFINE_integer("max_cases", 0, "Test cases evaluated (0: all, or 1 with --quick).")
flags.DEFINE_integer("ddpm_cases", 1, "Test cases the full DDPM chain runs on.")
flags.DEFINE_list("ddim_steps", [], "DDIM steps swept, with 10 (default 5,10,25,50; quick 5,10).")
flags.DEFINE_list("dpm_steps", [], "DPM-Solver++(2M) steps swept (default 3,5,10; quick 3).")
flags.DEFINE_list("ensembles", [], "Ensemble sizes swept, with 1 (default 1,4,8; quick 1,2).")
flags.DEFINE_list(
    "experiments",
    list(DEFAULT_EXPERIMENTS),
    f"Experiments to run: some of {', '.join(DEFAULT_EXPERIMENTS)}, and the opt-in "
    + " and ".join(f"{e.name} ({e.opt_in})" for e in EXPERIMENTS.values() if not e.default)
    + ".",
)
flags.DEFINE_integer("seed", 0, "Training seed of every arm (config.seed).")
flags.DEFINE_string("readme", None, "README whose results block gets the tables.")
flags.DEFINE_list(
    "budgets",
    ["main", "suite"],
    "sota: msseg's training budgets the peers are compared at, in this order (main: the main "
    "job's steps; suite: --steps); a later run with more budgets resumes the peers' training.",
)
flags.DEFINE_string(
    "peer_python",
    None,
    "sota: the peer environment's python (default: .peers-venv/bin/python, made by "
    "peers/setup.sh).",
)
flags.mark_flag_as_required("out")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out = Path(FLAGS.out).resolve()
    root = Path(__file__).resolve().parents[1]
    results_dir = (
        Path(FLAGS.results)
        if FLAGS.results
        else (out / "experiments" if FLAGS.quick else root / "experiments")
    )
    try:
        settings = plan.Settings(
            out=out,
            results=results_dir.resolve(),
            date=FLAGS.date or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
            quick=FLAGS.quick,
            data=FLAGS.data,
            steps=FLAGS.steps,
            max_cases=FLAGS.max_cases,
            ddpm_cases=FLAGS.ddpm_cases,
            ddim_steps=tuple(int(n) for n in FLAGS.ddim_steps),
            dpm_steps=tuple(int(n) for n in FLAGS.dpm_steps),
            ensembles=tuple(int(n) for n in FLAGS.ensembles),
            experiments=tuple(FLAGS.experiments),
            seed=FLAGS.seed,
            readme=Path(FLAGS.readme).resolve() if FLAGS.readme else None,
            python=sys.executable,
            budgets=tuple(FLAGS.budgets),
            peer_python=FLAGS.peer_python,
        )
        written = results.write_all(settings, plan.run_suite(settings))
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"suite: {e}") from None
    for path in written:
        print(path)


if __name__ == "__main__":
    app.run(main)
