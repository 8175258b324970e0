"""Segment T1 NIfTI files with an exported model directory (msseg/export/format.py).

  python tools/sample.py --model=MODEL --input=FILE|DIR|GLOB --output=OUT
      [--sampler=ddim|dpmpp2m|ddpm|multiscale|anchored] [--steps=N] [--ensemble=N] [--seed=S]
      [--step_fusion=none|mean|linear]
      [--level=leaves|all|L] [--progress=auto|on|off] [--overwrite]
      [--coordinator_address=HOST:PORT --num_processes=N --process_id=I | --distributed=on]

Needs jax, numpy, nibabel, scipy, matplotlib, absl-py and flatbuffers only
(requirements/sample.txt): with --route=exported (the default
where msseg's model code is not importable) the exported sampler runs alone. Writes per
input <name>_seg.nii.gz (the leaves, or tree level L with --level=L; with --level=all also
<name>_seg_level<l>.nii.gz for every level l, coarse to fine), <name>_uncertainty.nii.gz
(entropy, nats), with --ensemble > 1 <name>_variance.nii.gz (the members' total variance),
<name>_qc.png and a volumes.csv row (mm³ per leaf, tree node and named set), and into the
folder the colour tables labels_lut.txt (freeview) and labels_itksnap.txt (ITK-SNAP); see
docs/outputs.md. A bad input is reported and skipped, and the exit code is 1 if any failed.
A case's files are renamed into place together once all are written, so a failed case keeps
an earlier run's outputs. Each file's log line ends in the ETA of the files left; on a
terminal (--progress=auto) long files also report their windows every 10 s or so.

A rerun into the same folder skips the files whose outputs are complete (--overwrite redoes
them). With jax.distributed (the flags train.py takes, msseg/cluster.py) the files are split
across the processes: each segments its share on its own devices, writes its rows to
volumes.process<i>.csv, and process 0 merges them into volumes.csv at the end (the output
folder must be on a file system every process sees).
"""

import sys

from absl import app, flags, logging

from msseg import cluster
from msseg.inference import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Model directory (tools/export.py).", required=True)
flags.DEFINE_string("input", None, "A NIfTI file, a folder of them, or a glob.", required=True)
flags.DEFINE_string("output", None, "Output folder.", required=True)
cli.define_sampling_flags()
flags.DEFINE_integer("depth", 0, "Enter the U-Net at this depth (input at 2^depth x spacing).")
flags.DEFINE_string(
    "level",
    "leaves",
    "Segmentation written to <name>_seg: 'leaves', a tree level number (0 = coarsest), or "
    "'all' (leaves, plus <name>_seg_level<l> for every level).",
)
flags.DEFINE_bool(
    "overwrite",
    False,
    "Segment every file again, also those whose outputs in --output are complete.",
)
cluster.define_flags()
flags.DEFINE_string(
    "compilation_cache",
    "~/.cache/msseg/jax",
    "Persistent XLA compilation cache folder ('' = off).",
)


def main(argv):
    del argv
    cluster.initialize(FLAGS)
    cli.use_compilation_cache(FLAGS.compilation_cache)
    from msseg import files
    from msseg.errors import InputError
    from msseg.inference import cohort, predict

    try:
        level = predict.parse_level(FLAGS.level)
        files.check_output_dir(FLAGS.output)  # creates nothing; cohort.run creates it
        model, cfg = cli.open_model(FLAGS)
        strip, bound = cli.open_strip_models(FLAGS)
        predict.check_level(level, model.protocol)
        inputs = predict.find_inputs(FLAGS.input)
    except (InputError, FileNotFoundError, ValueError) as e:
        sys.exit(f"sample.py: {e}")
    try:
        opts = predict.Options(
            cfg,
            FLAGS.seed,
            FLAGS.overlap,
            FLAGS.batch,
            FLAGS.depth,
            level,
            tta=FLAGS.tta,
            postprocess=FLAGS.postprocess,
            strip_model=strip,
            strip_open_mm=FLAGS.strip_open_mm,
            strip_bound_model=bound,
            devices=FLAGS.devices,
            space=FLAGS.space,
            window=cli.window(FLAGS),
        )
        mesh = predict.mesh_text(opts)
    except ValueError as e:
        sys.exit(f"sample.py: {e}")
    logging.info("sample: %d input(s), route %s, %s; %s", len(inputs), model.route, cfg, mesh)
    # settings, the output folder and its volumes.csv are checked before the first file
    try:
        r = cohort.run(
            model,
            inputs,
            FLAGS.output,
            opts,
            progress=cli.show_progress(FLAGS),
            overwrite=FLAGS.overwrite,
        )
    except (InputError, ValueError) as e:
        sys.exit(f"sample.py: {e}")
    import jax

    skipped = f", {len(r.skipped)} skipped as complete" if r.skipped else ""
    share = ""
    if jax.process_count() > 1:
        share = f" (process {jax.process_index() + 1} of {jax.process_count()}: its share of "
        share += f"{len(inputs)})"
    print(
        f"sample.py: {len(r.done)} of {len(r.share)} segmented{skipped} into {FLAGS.output}{share}"
    )
    for path, msg in r.failures:
        print(f"  FAILED {path}: {msg}")
    if r.failures:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
