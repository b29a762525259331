"""M2 in plain PyTorch, as a PyTorch user would write it: the peer of throughput.py.

The same layers as untapped_jax's default networks (one hidden layer of 500 softplus
units, z of 50), the same batches and exact enumeration of the ten labels for the
unlabeled bound. As a PyTorch user writes it, the encoder runs on [x, y]
concatenated, once per label (so x W_x is computed ten times per unlabeled image,
where untapped_jax computes it once), and the ten labels are a Python loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class TorchM2(nn.Module):

  def __init__(self, *, num_pixels=784, num_classes=10, latent_dim=50, hidden=500):
    super().__init__()
    self.num_classes, self.latent_dim = num_classes, latent_dim
    self.classifier = nn.Sequential(nn.Linear(num_pixels, hidden), nn.Softplus(),
                                    nn.Linear(hidden, num_classes))
    self.encoder = nn.Sequential(nn.Linear(num_pixels + num_classes, hidden), nn.Softplus(),
                                 nn.Linear(hidden, 2 * latent_dim))
    self.decoder = nn.Sequential(nn.Linear(num_classes + latent_dim, hidden), nn.Softplus(),
                                 nn.Linear(hidden, num_pixels))

  def labeled_elbo(self, x, y):
    """ELBO(x, y) per example: x [B, D], y [B, K] -> [B]."""
    mean, log_var = self.encoder(torch.cat([x, y], -1)).chunk(2, -1)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    logits = self.decoder(torch.cat([y, z], -1))
    log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(-1)
    return log_px - kl - math.log(self.num_classes)

  def unlabeled_bound(self, x):
    """U(x) = sum_y q(y|x) ELBO(x, y) + H[q(y|x)]: x [B, D] -> [B]."""
    log_q = F.log_softmax(self.classifier(x), -1)
    elbos = []
    for k in range(self.num_classes):
      label = torch.full((len(x),), k, dtype=torch.long, device=x.device)
      y = F.one_hot(label, self.num_classes).to(x.dtype)
      elbos.append(self.labeled_elbo(x, y))
    elbos = torch.stack(elbos, -1)
    return (log_q.exp() * (elbos - log_q)).sum(-1)

  def loss(self, x_labeled, y_labeled, x_unlabeled, *, alpha: float):
    log_q_y = (y_labeled * F.log_softmax(self.classifier(x_labeled), -1)).sum(-1)
    labeled = self.labeled_elbo(x_labeled, y_labeled) + alpha * log_q_y
    return -(labeled.mean() + self.unlabeled_bound(x_unlabeled).mean())


def make_step(model: TorchM2, *, alpha: float = 1.0, compile_step: bool = False,
              compute_dtype: str = "float32"):
  """step(x_labeled, y_labeled, x_unlabeled) -> loss: one Adam update.

  compute_dtype 'bfloat16' runs the forward pass under torch.autocast, as a PyTorch user
  asks for mixed precision: matmuls in bfloat16, float32 parameters, and the reductions
  and losses autocast keeps in float32.
  """
  if compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype={compute_dtype!r}: expected 'float32' or 'bfloat16'.")
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = torch.compile(model.loss) if compile_step else model.loss
  device_type = next(model.parameters()).device.type

  def step(x_labeled, y_labeled, x_unlabeled):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16,
                        enabled=compute_dtype == "bfloat16"):
      loss = loss_fn(x_labeled, y_labeled, x_unlabeled, alpha=alpha)
    loss.backward()
    optimizer.step()
    return loss

  return step
