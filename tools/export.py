"""Export a training run's checkpoint as a self-contained model directory (msseg/export/format.py).

python tools/export.py --workdir=W --output=MODEL [--step=latest|best|N]
"""

from absl import app, flags, logging

from msseg.export import exporter

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (config.json, checkpoints/).", required=True)
flags.DEFINE_string(
    "output",
    None,
    "Model directory to write: a new or empty folder, or an msseg model directory (replaced "
    "atomically; files it does not list are kept).",
    required=True,
)
flags.DEFINE_string("step", "latest", "Checkpoint: latest, best (validation Dice) or a step.")
flags.DEFINE_list("platforms", list(exporter.PLATFORMS), "Platforms to lower the sampler for.")


def main(argv):
    del argv
    from msseg.errors import InputError

    try:
        out = exporter.export_model(
            FLAGS.workdir, FLAGS.output, FLAGS.step, platforms=tuple(FLAGS.platforms)
        )
    except (FileNotFoundError, ValueError, InputError) as e:
        raise SystemExit(f"export.py: {e}") from None
    logging.info("exported %s", out)
    print(out)


if __name__ == "__main__":
    app.run(main)
