"""Independent plain-NumPy (float64) reference of the M2 networks, for the tests.

Everything is rebuilt from the raw weight arrays of an `untapped_jax.models.M2`
and written without any JAX code, so the tests can compare the library's bounds
with a separate computation. The activation between layers is passed by name
("softplus" or "tanh"), matching the model it is built from.

Imported by the test modules as `numpy_reference` (tests/ is not a package;
pytest puts the test file's directory on sys.path).
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = {
    "softplus": lambda a: np.logaddexp(0.0, a),
    "tanh": np.tanh,
}


def np_activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"activation={name!r}; expected one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def np_linear(layer):
  """(kernel [in, out], bias [out]) of an nnx.Linear in float64; zero bias if it has none."""
  w = np.asarray(layer.kernel[...], np.float64)
  bias = getattr(layer, "bias", None)
  b = np.zeros(w.shape[1]) if bias is None else np.asarray(bias[...], np.float64)
  return w, b


def np_layers(mlp):
  return [np_linear(l) for l in mlp.layers]


def np_encoder_layers(encoder):
  """The encoder as one MLP on concat([x, y]).

  Handles both layouts: an MLP on the concatenation, or a first layer split into
  from_x(x) + from_y(y) (activation after it) followed by `net`.
  """
  if hasattr(encoder, "from_x"):
    wx, bx = np_linear(encoder.from_x)
    wy, by = np_linear(encoder.from_y)
    return [(np.concatenate([wx, wy], 0), bx + by)] + np_layers(encoder.net)
  return np_layers(encoder.net)


def np_mlp(layers, h, activation: str):
  """Affine layers [(w, b), ...] with `activation` between them (none after the last)."""
  act = np_activation(activation)
  for w, b in layers[:-1]:
    h = act(h @ w + b)
  w, b = layers[-1]
  return h @ w + b


def np_log_sigmoid(a):
  return -np.logaddexp(0.0, -a)


def np_bernoulli(x, logits):
  """log prod_d sigmoid(l_d)^x_d (1 - sigmoid(l_d))^(1 - x_d), summed over the last axis."""
  return np.sum(x * np_log_sigmoid(logits) + (1.0 - x) * np_log_sigmoid(-logits), -1)


def np_log_normal(z, mean, log_var):
  """log N(z; mean, diag exp(log_var)) summed over the last axis."""
  return np.sum(-0.5 * np.log(2 * np.pi) - 0.5 * log_var
                - 0.5 * (z - mean) ** 2 / np.exp(log_var), -1)


def np_logsumexp(a, axis=-1):
  m = np.max(a, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


class NumpyM2:
  """Plain NumPy forward passes of the three networks of an M2 model.

  Sizes (D pixels, K classes, Z latent dimensions) are read from the weights.
  """

  def __init__(self, model, activation: str):
    np_activation(activation)  # fail early on an unknown name
    self.activation = activation
    self.cls = np_layers(model.classifier.net)
    self.enc = np_encoder_layers(model.encoder)
    self.dec = np_layers(model.decoder.net)
    self.num_pixels = self.cls[0][0].shape[0]
    self.num_classes = self.cls[-1][0].shape[1]
    self.latent_dim = self.enc[-1][0].shape[1] // 2

  def log_q_y_given_x(self, x):  # [..., D] -> [..., K]
    logits = np_mlp(self.cls, np.asarray(x, np.float64), self.activation)
    return logits - np_logsumexp(logits)[..., None]

  def encode(self, x, y):  # x [..., D], y [..., K] -> mean, log_var [..., Z]
    h = np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64)], -1)
    out = np_mlp(self.enc, h, self.activation)
    return out[..., :self.latent_dim], out[..., self.latent_dim:]

  def decoder_logits(self, y, z):  # y [K], z [..., Z] -> [..., D]
    z = np.asarray(z, np.float64)
    y = np.broadcast_to(np.asarray(y, np.float64), z.shape[:-1] + (self.num_classes,))
    return np_mlp(self.dec, np.concatenate([y, z], -1), self.activation)

  def labeled_elbo(self, x, y, eps):
    """Loop over the S noise draws (eps [S, Z]); per-dimension KL written as
    log(1/s) + (s^2 + m^2 - 1)/2, not the library's form.
    """
    x = np.asarray(x, np.float64)
    mean, log_var = self.encode(x, y)
    std = np.exp(0.5 * log_var)
    log_px = 0.0
    for s in range(eps.shape[0]):
      z = mean + std * eps[s]
      logits = self.decoder_logits(y, z)
      log_px += sum(x[d] * np.log(1.0 / (1.0 + np.exp(-logits[d])))
                    + (1.0 - x[d]) * np.log(1.0 / (1.0 + np.exp(logits[d])))
                    for d in range(self.num_pixels))
    log_px /= eps.shape[0]
    kl = sum(np.log(1.0 / std[j]) + 0.5 * (std[j] ** 2 + mean[j] ** 2) - 0.5
             for j in range(self.latent_dim))
    return log_px + np.log(1.0 / self.num_classes) - kl

  def unlabeled_bound(self, x, eps_per_class):
    """sum_y q(y|x) L(x, y) + H[q(y|x)], eps_per_class[k] the [S, Z] noise of label k."""
    log_q = self.log_q_y_given_x(x)
    q = np.exp(log_q)
    eye = np.eye(self.num_classes)
    total = 0.0
    for k in range(self.num_classes):
      total += q[k] * self.labeled_elbo(x, eye[k], eps_per_class[k])
    entropy = -np.sum(q * log_q)
    return total + entropy

  # --- exact / estimated marginal likelihoods -------------------------------

  def log_px_given_y_is(self, x, y, num, rs):
    """log p(x|y) = log E_{r(z)}[p(z) p(x|y,z) / r(z)], r = (q(z|x,y) + p(z)) / 2.

    The proposal is q(z|x,y) made defensive by mixing in the prior, so the
    weights are bounded by 2 and the estimate has small, finite variance.
    """
    z_dim = self.latent_dim
    mean, log_var = self.encode(np.asarray(x, np.float64), y)
    from_q = rs.rand(num) < 0.5
    z = np.where(from_q[:, None], mean + np.exp(0.5 * log_var) * rs.randn(num, z_dim),
                 rs.randn(num, z_dim))
    zeros = np.zeros(z_dim)
    log_prior = np_log_normal(z, zeros, zeros)
    log_q = np_log_normal(z, mean, log_var)
    log_r = np.logaddexp(log_q, log_prior) - np.log(2.0)
    log_w = log_prior + np_bernoulli(x, self.decoder_logits(y, z)) - log_r
    return np_logsumexp(log_w) - np.log(num)

  def log_px_given_y_quadrature(self, x, y, n=40):
    """log ∫ N(z; 0, I) p(x|y,z) dz by tensor Gauss-Hermite(e) quadrature (Z = 2 only)."""
    assert self.latent_dim == 2, self.latent_dim
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    weights = weights / np.sqrt(2 * np.pi)
    z = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    log_w = np.log(np.outer(weights, weights).reshape(-1))
    return np_logsumexp(log_w + np_bernoulli(x, self.decoder_logits(y, z)))
