r"""M2's learning curve against the published ones: validation accuracy per unlabeled epoch.

  python experiments/m2_learning_curve.py --labels 100 \
      --out_png docs/figures/m2_learning_curve_100.png \
      --out_json docs/results/m2_jonemeth/labels_100_seed_0.json \
      "jonemeth recipe, seed 0=runs/m2_jonemeth/labels_100" ["our recipe=runs/m2_long/labels_100"]

Each RUN_DIR is a run of `untapped-train` (one seed) whose metrics.jsonl logged
validation/accuracy. The published points are jonemeth/generative-models `ssl-vae`'s logs
(one hidden layer; PUBLISHED below, with their source) and Pyro's SS-VAE tutorial's final
figure; an epoch is one pass over the 50,000 unlabeled training images in every curve, so
the x axes agree whatever the batch. The JSON keeps each run's curve (step, unlabeled
epochs, validation accuracy and bounds) beside the published points, for the README's table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from untapped_jax import files

JONEMETH_LOGS = "jonemeth/generative-models ssl-vae/logs/sslvae_1layer_mnist_{labels:04d}/version_0/log.txt"

# Accuracy (fraction) by epoch as their logs record it. At 3000 labels only the test curve
# was transcribed (issue 14).
PUBLISHED = {
    100: {
        "jonemeth validation": {10: 0.6078, 20: 0.6297, 30: 0.6315, 100: 0.6333, 400: 0.7173,
                                800: 0.8399, 1400: 0.8942, 3000: 0.9319},
        "jonemeth test": {10: 0.5745, 20: 0.6213, 30: 0.6175, 100: 0.6074, 400: 0.7024,
                          800: 0.8298, 1400: 0.8871, 3000: 0.9285},
    },
    3000: {
        "jonemeth test": {200: 0.911, 400: 0.947, 1000: 0.963, 2000: 0.9708},
    },
}
# Final test accuracy only, with their auxiliary loss and five label draws.
PYRO_TUTORIAL = {100: 0.932, 3000: 0.958}


def read_curve(run_dir: str) -> list[dict]:
  """The evaluations logged by one run: [{step, unlabeled_epochs, validation_*}], by step."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise ValueError(f"run folder {run_dir!r} has no metrics.jsonl; expected the workdir of "
                     "an untapped-train run.")
  points = {}
  with open(path) as f:
    for line in f:
      record = json.loads(line) if line.strip() else {}
      if "validation/accuracy" in record:
        points[record["step"]] = {
            "step": record["step"], "unlabeled_epochs": record["unlabeled_epochs"],
            **{k.replace("/", "_"): v for k, v in record.items()
               if k.startswith("validation/")}}
  if not points:
    raise ValueError(f"run folder {run_dir!r} logged no validation/accuracy; expected a run "
                     "with train.eval_every > 0.")
  return [points[s] for s in sorted(points)]


def draw(curves: dict[str, list[dict]], labels: int, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for name, points in curves.items():
    ax.plot([p["unlabeled_epochs"] for p in points],
            [100 * p["validation_accuracy"] for p in points], linewidth=1.2,
            label=f"{name} (validation)")
  for (name, by_epoch), marker in zip(PUBLISHED[labels].items(), "os^"):
    epochs = sorted(by_epoch)
    ax.plot(epochs, [100 * by_epoch[e] for e in epochs], marker=marker, linestyle="--",
            linewidth=0.8, markersize=4, label=f"{name} (published)")
  ax.axhline(100 * PYRO_TUTORIAL[labels], color="grey", linewidth=0.8, linestyle=":",
             label="Pyro tutorial, final test (aux. loss)")
  ax.set_xscale("log")
  ax.set_xlabel("unlabeled epochs (passes over 50,000 images)")
  ax.set_ylabel("accuracy, %")
  ax.set_title(f"M2 on MNIST, {labels} labels")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
  parser.add_argument("--labels", type=int, required=True, choices=sorted(PUBLISHED))
  parser.add_argument("--out_png", required=True)
  parser.add_argument("--out_json", default="")
  args = parser.parse_args(argv)
  curves = {}
  try:
    for item in args.runs:
      name, sep, run_dir = item.rpartition("=")
      if not sep or not name:
        raise ValueError(f"{item!r}: expected LABEL=RUN_DIR")
      curves[name] = read_curve(run_dir)
  except ValueError as e:
    print(f"m2_learning_curve: {e}", file=sys.stderr)
    return 2
  draw(curves, args.labels, args.out_png)
  if args.out_json:
    files.write_json(args.out_json, {
        "labels": args.labels, "ours": curves,
        "published": {"source": JONEMETH_LOGS.format(labels=args.labels),
                      **{k: {str(e): a for e, a in v.items()}
                         for k, v in PUBLISHED[args.labels].items()},
                      "pyro_tutorial_final_test": PYRO_TUTORIAL[args.labels]}})
  for name, points in curves.items():
    last = points[-1]
    print(f"{name}: {len(points)} evaluations, last at {last['unlabeled_epochs']:.0f} epochs: "
          f"validation accuracy {last['validation_accuracy']:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
