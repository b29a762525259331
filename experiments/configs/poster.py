r"""The poster's experiment: labeled (x, y) for digits 0-4 only, unlabeled x and
label-only y for digits 0-9; digits 5-9 of the test set are held out.

  untapped-train --config experiments/configs/poster.py:model=untapped --workdir runs/poster_u

Arguments (comma separated):
  model=m2|untapped   the objective (same data, seeds and networks for both);
  per_class=N         labeled images per digit 0-4 (default 100, i.e. 500 labels);
  runlocal            a seconds-long smoke run.
Untapped's label-only term defaults: lambda = 1, straight-through x, a pixel-wise
Bernoulli q(x) fitted to the training images; see configs/default.py's objective.
"""

from untapped_jax.configs import default
from untapped_jax.configs import parse_arg
from untapped_jax.configs import shrink_for_runlocal

SEEN = (0, 1, 2, 3, 4)


def get_config(arg=None):
  args = parse_arg(arg, model="untapped", per_class=100, runlocal=False)
  if args["model"] not in ("m2", "untapped"):
    raise ValueError(f"model={args['model']!r}; expected 'm2' or 'untapped'.")
  if not isinstance(args["per_class"], int) or args["per_class"] < 1:
    raise ValueError(f"per_class={args['per_class']!r}; expected a positive integer.")
  c = default.get_config()
  c.model_name = args["model"]
  c.data.labeled_classes = SEEN
  c.data.labeled_per_class = args["per_class"]
  c.data.unlabeled_classes = tuple(range(10))
  c.data.label_only_classes = tuple(range(10))
  c.objective.classification_weight = 1.0  # as m2_benchmark.py, measured there
  c.train.learning_rate = 1e-3
  c.train.num_steps = 10000
  c.train.eval_every = 1000
  c.eval.semantic = True
  # Validation accuracy counts dimensions 5-9 as right only when they land on their
  # own digit by chance, so it is no guide to which parameters are best here.
  c.train.select_by = "final"
  if args["runlocal"]:
    shrink_for_runlocal(c)
  return c


def get_hyper(hyper):
  """The comparison: both models over five seeds."""
  return hyper.product([hyper.sweep("config.seed", list(range(5))),
                        hyper.sweep("config.model_name", ["m2", "untapped"])])
