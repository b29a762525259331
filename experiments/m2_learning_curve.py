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
epochs, validation accuracy and bounds) beside the published points, and the script prints
the README's tables: each run's validation accuracy at the epochs jonemeth's log records
(and at each run's last evaluation), beside his, with the first run's unlabeled bound; and
the first run's training loss and labeled log q(y|x) beside his log's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from untapped_jax import files
from untapped_jax import stats

JONEMETH_LOGS = "jonemeth/generative-models ssl-vae/logs/sslvae_1layer_mnist_{labels:04d}/version_0/log.txt"

# Accuracy (fraction) by epoch as their logs record it (log.txt, one line every 10 epochs):
# every 10th epoch to 200 and every 50th after, validation and test, at both label counts.
PUBLISHED = {
    100: {
        "jonemeth validation": {10: 0.6078, 20: 0.6297, 30: 0.6315, 40: 0.6039, 50: 0.6069,
                                60: 0.6146, 70: 0.6159, 80: 0.617, 90: 0.6317, 100: 0.6333,
                                110: 0.6241, 120: 0.6299, 130: 0.6218, 140: 0.6314, 150: 0.6365,
                                160: 0.6289, 170: 0.6338, 180: 0.6322, 190: 0.6431, 200: 0.6434,
                                250: 0.6481, 300: 0.668, 350: 0.695, 400: 0.7173, 450: 0.7381,
                                500: 0.7564, 550: 0.7772, 600: 0.7922, 650: 0.8066, 700: 0.82,
                                750: 0.8307, 800: 0.8399, 850: 0.8459, 900: 0.8555, 950: 0.8611,
                                1000: 0.8661, 1050: 0.8696, 1100: 0.8743, 1150: 0.8772,
                                1200: 0.8818, 1250: 0.8861, 1300: 0.8886, 1350: 0.8919,
                                1400: 0.8942, 1450: 0.901, 1500: 0.8998, 1550: 0.9035,
                                1600: 0.9069, 1650: 0.9052, 1700: 0.9058, 1750: 0.9107,
                                1800: 0.9147, 1850: 0.9149, 1900: 0.9168, 1950: 0.9192,
                                2000: 0.9203, 2050: 0.9226, 2100: 0.9189, 2150: 0.9222,
                                2200: 0.9247, 2250: 0.9244, 2300: 0.9259, 2350: 0.9251,
                                2400: 0.9269, 2450: 0.9281, 2500: 0.9282, 2550: 0.9296,
                                2600: 0.928, 2650: 0.931, 2700: 0.9322, 2750: 0.9322,
                                2800: 0.9314, 2850: 0.9317, 2900: 0.9329, 2950: 0.9326,
                                3000: 0.9319},
        "jonemeth test": {10: 0.5745, 20: 0.6213, 30: 0.6175, 40: 0.5908, 50: 0.59, 60: 0.6009,
                          70: 0.601, 80: 0.6011, 90: 0.6068, 100: 0.6074, 110: 0.5994,
                          120: 0.6057, 130: 0.6018, 140: 0.6038, 150: 0.6115, 160: 0.5989,
                          170: 0.6069, 180: 0.6079, 190: 0.6075, 200: 0.6188, 250: 0.6175,
                          300: 0.6449, 350: 0.6756, 400: 0.7024, 450: 0.7209, 500: 0.7455,
                          550: 0.7655, 600: 0.7832, 650: 0.797, 700: 0.8071, 750: 0.8192,
                          800: 0.8298, 850: 0.8386, 900: 0.8463, 950: 0.8478, 1000: 0.8553,
                          1050: 0.8629, 1100: 0.8647, 1150: 0.8687, 1200: 0.8774, 1250: 0.8803,
                          1300: 0.8831, 1350: 0.883, 1400: 0.8871, 1450: 0.8928, 1500: 0.8938,
                          1550: 0.8976, 1600: 0.9017, 1650: 0.9008, 1700: 0.8996, 1750: 0.9058,
                          1800: 0.9097, 1850: 0.9108, 1900: 0.9118, 1950: 0.9143, 2000: 0.9136,
                          2050: 0.9168, 2100: 0.9153, 2150: 0.9168, 2200: 0.9208, 2250: 0.9205,
                          2300: 0.9205, 2350: 0.9195, 2400: 0.9233, 2450: 0.9233, 2500: 0.9242,
                          2550: 0.9245, 2600: 0.9247, 2650: 0.9259, 2700: 0.9275, 2750: 0.9297,
                          2800: 0.9277, 2850: 0.9292, 2900: 0.9282, 2950: 0.9294, 3000: 0.9285},
    },
    3000: {
        "jonemeth validation": {10: 0.8054, 20: 0.8247, 30: 0.8202, 40: 0.8146, 50: 0.8227,
                                60: 0.8251, 70: 0.8375, 80: 0.8342, 90: 0.8429, 100: 0.8465,
                                110: 0.8482, 120: 0.8667, 130: 0.871, 140: 0.8807, 150: 0.8854,
                                160: 0.8903, 170: 0.9027, 180: 0.9038, 190: 0.9085, 200: 0.9102,
                                250: 0.9282, 300: 0.9359, 350: 0.9412, 400: 0.9478, 450: 0.9498,
                                500: 0.9534, 550: 0.9559, 600: 0.957, 650: 0.9589, 700: 0.9587,
                                750: 0.9619, 800: 0.9628, 850: 0.9614, 900: 0.9642, 950: 0.9634,
                                1000: 0.9653, 1050: 0.9652, 1100: 0.9665, 1150: 0.9653,
                                1200: 0.9658, 1250: 0.9678, 1300: 0.9674, 1350: 0.9682,
                                1400: 0.9665, 1450: 0.968, 1500: 0.9656, 1550: 0.9676,
                                1600: 0.9662, 1650: 0.9672, 1700: 0.9673, 1750: 0.968,
                                1800: 0.9687, 1850: 0.968, 1900: 0.9695, 1950: 0.9684,
                                2000: 0.9689, 2050: 0.9689, 2100: 0.9683, 2150: 0.97,
                                2200: 0.9686, 2250: 0.9693, 2300: 0.9701, 2350: 0.9703,
                                2400: 0.9693, 2450: 0.9701, 2500: 0.9688, 2550: 0.9695,
                                2600: 0.9701, 2650: 0.9705, 2700: 0.9698, 2750: 0.9707,
                                2800: 0.9702, 2850: 0.9704, 2900: 0.9702, 2950: 0.9699,
                                3000: 0.9707},
        "jonemeth test": {10: 0.7942, 20: 0.8129, 30: 0.8094, 40: 0.8008, 50: 0.8088,
                          60: 0.8113, 70: 0.8295, 80: 0.8255, 90: 0.8355, 100: 0.8364,
                          110: 0.8385, 120: 0.8577, 130: 0.863, 140: 0.8727, 150: 0.8808,
                          160: 0.8842, 170: 0.8994, 180: 0.9021, 190: 0.9068, 200: 0.9109,
                          250: 0.9289, 300: 0.935, 350: 0.9414, 400: 0.9467, 450: 0.9472,
                          500: 0.9519, 550: 0.9533, 600: 0.9558, 650: 0.9567, 700: 0.959,
                          750: 0.9603, 800: 0.961, 850: 0.9615, 900: 0.963, 950: 0.9611,
                          1000: 0.9631, 1050: 0.964, 1100: 0.9664, 1150: 0.9645, 1200: 0.965,
                          1250: 0.9653, 1300: 0.9666, 1350: 0.9664, 1400: 0.9668, 1450: 0.9665,
                          1500: 0.9642, 1550: 0.9679, 1600: 0.9666, 1650: 0.968, 1700: 0.9699,
                          1750: 0.9673, 1800: 0.9697, 1850: 0.9681, 1900: 0.9699, 1950: 0.9696,
                          2000: 0.9708, 2050: 0.97, 2100: 0.968, 2150: 0.9707, 2200: 0.9704,
                          2250: 0.9698, 2300: 0.9712, 2350: 0.9703, 2400: 0.9703, 2450: 0.9716,
                          2500: 0.9715, 2550: 0.971, 2600: 0.9711, 2650: 0.972, 2700: 0.9722,
                          2750: 0.9713, 2800: 0.9711, 2850: 0.9713, 2900: 0.9727, 2950: 0.9712,
                          3000: 0.9708},
    },
}

PYRO_TUTORIAL = {100: 0.932, 3000: 0.958}

# Training loss (nats per image, the objective's scale in both: the batch's sum over its
# labeled and unlabeled images / their number) and the labeled images' mean log q(y|x)
# ('s_qy'), from the same log.txt's line "epoch: E, it: 100|200" (the epoch's last; an EMA
# of the iterations with decay 0.99).
JONEMETH_TRAINING = {
    100: {10: (133.47, -1.36), 20: (117.67, -1.01), 50: (107.54, -0.55), 100: (103.77, -0.33),
          150: (102.46, -0.21), 200: (101.67, -0.13), 250: (101.06, -0.09), 300: (100.49, -0.05),
          350: (100.01, -0.03), 400: (99.56, -0.02), 450: (99.19, -0.01), 500: (98.76, -0.01)},
    3000: {10: (120.62, -1.41), 20: (111.29, -1.20), 50: (105.03, -0.89), 100: (102.40, -0.50),
           150: (100.89, -0.31), 200: (99.75, -0.17), 250: (99.05, -0.08), 300: (98.48, -0.05),
           350: (97.92, -0.03), 400: (97.49, -0.02), 450: (97.21, -0.01), 500: (96.99, -0.01)},
}


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


def read_training(run_dir: str) -> dict[int, dict[str, float]]:
  """The training metrics a run logged at whole unlabeled epochs: {epoch: {'loss',
  'log_q_y'}}, each the mean over the log window that ends there."""
  out = {}
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line) if line.strip() else {}
      epochs = record.get("unlabeled_epochs")
      if "train/loss" in record and epochs is not None and epochs == round(epochs):
        out[round(epochs)] = {"loss": record["train/loss"],
                              "log_q_y": record.get("train/log_q_y", float("nan"))}
  return out


def training_table(name: str, training: dict[int, dict[str, float]], labels: int) -> str:
  """Markdown: one run's training loss and labeled log q(y|x) beside jonemeth's log, at the
  epochs both have."""
  theirs = JONEMETH_TRAINING[labels]
  lines = [f"| epochs | {name}, training loss | jonemeth's log | difference | {name}, labeled "
           "log q(y\\|x) | jonemeth's log |", "|---" * 6 + "|"]
  for e in sorted(set(training) & set(theirs)):
    ours, (loss, log_q) = training[e], theirs[e]
    lines.append(f"| {e} | {ours['loss']:.2f} | {loss:.2f} | {ours['loss'] - loss:+.2f} | "
                 f"{ours['log_q_y']:.2f} | {log_q:.2f} |")
  return "\n".join(lines)


def table(curves: dict[str, list[dict]], labels: int) -> str:
  """Markdown: a row per epoch that jonemeth's log records and some run reached (or that
  is a run's last evaluation), each run's validation accuracy, his, and the first run's
  validation unlabeled bound (nats). With several runs (seeds), two more columns: their
  mean with its 95% Student-t interval where two or more reached the epoch, and the mean's
  difference from his log (the same interval: his value is one number, not a sample)."""
  by_epoch = {name: {round(p["unlabeled_epochs"]): p for p in points}
              for name, points in curves.items()}
  theirs = PUBLISHED[labels]["jonemeth validation"]
  epochs = sorted({e for points in by_epoch.values() for e in points if e in theirs}
                  | {round(points[-1]["unlabeled_epochs"]) for points in curves.values()})
  first = next(iter(curves))
  several = len(curves) > 1
  pct = lambda p: "" if p is None else f"{100 * p:.1f}%"
  lines = ["| epochs | " + " | ".join(f"{name}, validation" for name in curves)
           + (" | mean ± 95% (n) | mean − jonemeth" if several else "")
           + " | jonemeth's log, validation | " + f"{first}, validation unlabeled bound |",
           "|---" * (len(curves) + 3 + 2 * several) + "|"]
  for e in epochs:
    points = [by_epoch[name].get(e) for name in curves]
    bound = by_epoch[first].get(e)
    row = f"| {e} | " + " | ".join(pct(p and p["validation_accuracy"]) for p in points)
    if several:
      reached = [p["validation_accuracy"] for p in points if p]
      if len(reached) > 1:
        mean, half = stats.mean_and_interval(reached)
        row += f" | {100 * mean:.1f}% ± {100 * half:.1f} ({len(reached)})"
        row += (f" | {100 * (mean - theirs[e]):+.1f} ± {100 * half:.1f}" if e in theirs
                else " | ")
      else:
        row += " |  | "
    lines.append(row + f" | {pct(theirs.get(e))} | "
                 + (f"{bound['validation_unlabeled_bound']:.1f} |"
                    if bound and "validation_unlabeled_bound" in bound else " |"))
  return "\n".join(lines)


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
  curves, first_training = {}, None
  try:
    for item in args.runs:
      name, sep, run_dir = item.rpartition("=")
      if not sep or not name:
        raise ValueError(f"{item!r}: expected LABEL=RUN_DIR")
      curves[name] = read_curve(run_dir)
      if first_training is None:
        first_training = read_training(run_dir)
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
  print(table(curves, args.labels))
  print()
  print(training_table(next(iter(curves)), first_training, args.labels))
  return 0


if __name__ == "__main__":
  sys.exit(main())
