"""Train or resume a model: tools/train.py --config=configs/X.py --workdir=W [--config.a.b=v]

Multi-host: pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I on every
host, or run under a cluster that jax.distributed detects by itself (SLURM, Open MPI, TPU
pods) with --distributed=on (msseg/cluster.py). Each process feeds its own shard of the data.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from msseg import cluster

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics.jsonl, config.json.")
cluster.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
    """Drops INFO records of orbax and grain (one line per file saved) from the absl log."""

    def filter(self, record) -> bool:
        noisy = "/orbax/" in record.pathname or "/grain/" in record.pathname
        if "did not provide metrics" in record.getMessage():
            return False  # checkpoints between validations carry no Dice, by design
        return record.levelno >= 30 or not noisy


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    import jax

    cluster.initialize(FLAGS)
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)
    from msseg.errors import InputError
    from msseg.train.loop import NonFiniteError, train

    try:
        result = train(FLAGS.config, FLAGS.workdir)
    except (InputError, NonFiniteError, ValueError, FileNotFoundError) as e:
        logging.error("%s", e)
        sys.exit(f"train.py: {e}")
    summary = {k: v for k, v in result.items() if "/" not in k}
    print(f"process {jax.process_index()} done: {summary}", flush=True)
    if jax.process_index() == 0:
        print(f"metrics and curves in {FLAGS.workdir} (metrics.jsonl, curves.png)")


def parse_flags(argv):
    """absl parsing, with a one-line message (not a traceback) for a bad config override."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
        message = str(e).replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
        if len(message) > 1 and message[0] == message[-1] == "'":
            message = message[1:-1]
        sys.exit(f"train.py: bad flag or config override: {message}")


def run():
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
