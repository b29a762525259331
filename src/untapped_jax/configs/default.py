"""Default config: M2 on MNIST with 100 labels, Kingma et al.'s architecture."""

import os

import ml_collections

DIGITS = tuple(range(10))


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # > 1: train seeds seed .. seed + num_seeds - 1 as one vmapped population, each in
  # workdir/seed_<s>/, plus summary.json/.md over the seeds (train.train_and_evaluate).
  c.num_seeds = 1
  c.model_name = "m2"  # 'm2' | 'untapped'

  c.data = ml_collections.ConfigDict()
  c.data.source = "auto"  # 'auto' | 'folder' | 'tfds'
  c.data.dir = os.environ.get("UNTAPPED_DATA_DIR", "")
  c.data.tfds_data_dir = ""
  c.data.num_validation = 10000
  c.data.labeled_classes = DIGITS
  c.data.labeled_per_class = 10  # -1: every training image of the labeled classes
  c.data.unlabeled_classes = DIGITS
  c.data.max_unlabeled = -1  # -1: every remaining image
  # True: the unlabeled pool is drawn from all training images, labeled ones included.
  c.data.unlabeled_includes_labeled = False
  c.data.label_only_classes = DIGITS
  c.data.max_label_only = -1
  # 'images': the labels of the remaining (unlabeled, non-validation) training images;
  # 'frequencies': of every non-validation training image (MNIST's class frequencies
  # even when a class is labeled in full); 'classes': each class once (uniform).
  c.data.label_only_source = "images"
  c.data.binarization = "dynamic"  # 'dynamic' | 'static' | 'none' (k/255) | 'none_256' (k/256)
  c.data.labeled_batch_size = 100
  c.data.unlabeled_batch_size = 100
  c.data.label_only_batch_size = 100

  c.model = ml_collections.ConfigDict()
  c.model.num_pixels = 784
  c.model.num_classes = 10
  c.model.latent_dim = 50
  c.model.hidden = (500,)
  c.model.activation = "softplus"
  c.model.kernel_init = "lecun_normal"  # 'lecun_normal' (flax's) | 'normal' | 'torch_linear'
  c.model.init_stddev = 1e-3  # kernel_init='normal' only: N(0, init_stddev^2)
  # What the layers compute in: 'float32', or 'bfloat16' (parameters, optimizer and the
  # bounds' sums stay float32; docs/benchmarks.md says how far it moves the bounds).
  c.model.compute_dtype = "float32"
  # The layers' float32 matmul precision (models.matmul_precision): 'default' is the
  # backend's (TF32 on recent NVIDIA GPUs, one bfloat16 pass on TPUs, float32 on CPUs);
  # 'float32' is full float32 everywhere; 'tensorfloat32', 'bfloat16' or a
  # jax.lax.DotAlgorithmPreset name such as 'TF32_TF32_F32' ask for less.
  c.model.matmul_precision = "default"

  c.objective = ml_collections.ConfigDict()
  # 'dataset': each stream's sum estimated from its batch mean (module doc of objective.py);
  # 'batch_mean': the weights below are plain coefficients of the batch means.
  c.objective.stream_weighting = "dataset"
  c.objective.classification_weight = 0.1  # alpha = 0.1 * N / N_labeled per labeled example
  c.objective.labeled_weight = 1.0  # 'batch_mean' only
  c.objective.unlabeled_weight = 1.0  # 'batch_mean' only
  # > 0: cross entropy of the labels against a Concrete sample of q(y|x) at this temperature.
  c.objective.classification_temperature = 0.0
  c.objective.num_samples = 1  # z draws per ELBO
  # Untapped's label-only term (bounds/untapped.py); model_name='m2' forces its weight to 0.
  # 'bound' | 'sleep' | 'class_balance' | 'batch_posterior' | 'consistency' (docs/bounds.md)
  c.objective.label_only = "bound"
  c.objective.label_only_weight = 1.0  # lambda
  c.objective.sleep_terms = ()  # 'sleep' adds any of 'log_q_x', 'log_p_z', 'log_p_x'
  c.objective.label_only_z = "prior"  # 'prior': z ~ p(z) each step; 'fixed': drawn once
  c.objective.label_only_num_samples = 1  # (z, x) draws per label-only example
  c.objective.x_estimator = "straight_through"  # 'mean'|'relaxed'|'straight_through'|'exact'
  c.objective.relaxed_temperature = 0.5
  # q(x): 'uniform' | 'pixel_bernoulli' | 'model' (its own U(x)) | 'pretrained' (the U(x)
  # of the finished run in image_prior_workdir, held fixed)
  c.objective.image_prior = "pixel_bernoulli"
  c.objective.image_prior_workdir = ""
  c.objective.image_prior_stop_gradient = True  # 'model' prior: no gradient into U(x)'s params
  c.objective.label_smoothing = 1.0  # mass on the true class in log q(y|x); 1.0 = none

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 50000
  c.train.learning_rate = 3e-4
  c.train.adam_eps = 1e-8
  # 'constant' | 'cosine': the rate times a half cosine from 1 to lr_final_fraction at num_steps
  c.train.lr_schedule = "constant"
  c.train.lr_final_fraction = 0.0
  c.train.clip_global_norm = 0.0  # > 0: optax.clip_by_global_norm before Adam
  c.train.clip_value = 0.0  # > 0: then each gradient element clipped to [-v, v]
  # > 0: weight_decay * params added to the gradient before Adam (torch.optim.Adam's L2)
  c.train.weight_decay = 0.0
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.eval_batch_size = 1000
  c.train.checkpoint_every = 5000  # 0: no checkpoints
  c.train.progress_bar = True
  c.train.tensorboard = True  # also TensorBoard event files in WORKDIR/tensorboard
  # Parameters evaluated on test: those of the best validation accuracy, or the last.
  c.train.select_by = "validation_accuracy"  # 'validation_accuracy' | 'final'
  c.train.time_limit_s = 0.0  # > 0: stop (and evaluate) once training took this long
  # XLA:CPU's default hands fusions to YNNPACK; False compiles the train step with XLA's
  # own emitter, 7-17% faster per M2 step on an Intel Xeon (compiler_options.py).
  c.train.xla_cpu_ynnpack = False
  # Replicas whose gradients one pass computes (a scan over passes): 0 is one at a time on
  # a lone CPU device and all at once (one vmap) elsewhere (train.replicas_per_pass).
  c.train.replicas_per_pass = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.semantic = False  # after training: evaluator confusion, permutation, figures
  c.eval.samples_per_class = 100  # M images generated per y dimension
  c.eval.label_only_num_samples = 2000  # draws per class for the bound and IS log q(y)
  # A dimension owns a digit when this share of its samples goes to its majority digit.
  c.eval.ownership_threshold = 0.5
  c.eval.strong_evaluator = True  # also judge samples with an MLP evaluator (>= 98%)
  # At every validation: distinct digits, held-out accuracy and the gate, into metrics.jsonl.
  c.eval.semantic_curve = False
  # Decoder means per y dimension written to TensorBoard at each validation (0: none).
  c.eval.tensorboard_samples = 8
  c.eval.evaluator_cache_dir = ""  # default: $UNTAPPED_CACHE_DIR or ~/.cache/untapped_jax
  return c
