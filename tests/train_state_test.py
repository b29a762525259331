"""train_state.make_optimizer: clipping and Adam against Adam's first step worked out by hand."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from untapped_jax import train_state


def train_config(clip_global_norm=0.0, clip_value=0.0, lr=1e-3, eps=1e-4, weight_decay=0.0):
  return ml_collections.ConfigDict(dict(learning_rate=lr, adam_eps=eps,
                                        clip_global_norm=clip_global_norm,
                                        clip_value=clip_value, weight_decay=weight_decay))


GRAD = {"a": np.array([[6.0, -8.0], [0.002, 0.0]]), "b": np.array([1e-4, -3e-4])}


def hand_update(grad, g, v, lr, eps):
  leaves = {k: np.asarray(x, np.float64) for k, x in grad.items()}
  norm = np.sqrt(sum(np.sum(x ** 2) for x in leaves.values()))
  scale = min(1.0, g / norm) if g else 1.0
  out = {}
  for k, x in leaves.items():
    x = x * scale
    if v:
      x = np.clip(x, -v, v)
    # Adam's first step: m_hat = x, v_hat = x^2, so the update is -lr x / (|x| + eps).
    out[k] = -lr * x / (np.abs(x) + eps)
  return out


@pytest.mark.parametrize("g,v", [(0.0, 0.0), (5.0, 0.0), (0.0, 1.0), (5.0, 1.0), (20.0, 0.5)])
def test_make_optimizer_first_update_by_hand(g, v):
  tx = train_state.make_optimizer(train_config(g, v))
  params = {k: jnp.zeros_like(jnp.asarray(x, jnp.float32)) for k, x in GRAD.items()}
  grads = {k: jnp.asarray(x, jnp.float32) for k, x in GRAD.items()}
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = hand_update(GRAD, g, v, lr=1e-3, eps=1e-4)
  for k in GRAD:
    np.testing.assert_allclose(np.asarray(updates[k]), expected[k], rtol=1e-5, atol=1e-12)


def test_weight_decay_is_torch_adams_coupled_l2():
  # torch.optim.Adam(weight_decay=w) steps on g + w p: two steps worked out by hand, the
  # second with Adam's bias-corrected moments of the two penalised gradients.
  w, lr, eps, b1, b2 = 0.05, 1e-2, 1e-4, 0.9, 0.999
  tx = train_state.make_optimizer(train_config(lr=lr, eps=eps, weight_decay=w))
  p0 = {k: np.linspace(-2.0, 3.0, np.size(x)).reshape(np.shape(x)) for k, x in GRAD.items()}
  params = {k: jnp.asarray(x, jnp.float32) for k, x in p0.items()}
  grads = {k: jnp.asarray(x, jnp.float32) for k, x in GRAD.items()}
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  params1 = {k: params[k] + updates[k] for k in GRAD}
  updates2, _ = tx.update(grads, state, params1)
  for k in GRAD:
    g1 = GRAD[k] + w * p0[k]
    np.testing.assert_allclose(np.asarray(updates[k]), -lr * g1 / (np.abs(g1) + eps),
                               rtol=1e-5, atol=1e-9)
    p1 = p0[k] - lr * g1 / (np.abs(g1) + eps)
    g2 = GRAD[k] + w * p1
    m = ((1 - b1) * b1 * g1 + (1 - b1) * g2) / (1 - b1 ** 2)
    v = ((1 - b2) * b2 * g1 ** 2 + (1 - b2) * g2 ** 2) / (1 - b2 ** 2)
    np.testing.assert_allclose(np.asarray(updates2[k]), -lr * m / (np.sqrt(v) + eps),
                               rtol=1e-4, atol=1e-9)


def test_zero_weight_decay_adds_no_transformation():
  # The optimizer state of runs from before the key existed keeps its structure.
  params = {"a": jnp.zeros(2)}
  with_key = train_state.make_optimizer(train_config(weight_decay=0.0)).init(params)
  without = ml_collections.ConfigDict(dict(learning_rate=1e-3, adam_eps=1e-4,
                                           clip_global_norm=0.0, clip_value=0.0))
  assert (jax.tree.structure(with_key)
          == jax.tree.structure(train_state.make_optimizer(without).init(params)))


@pytest.mark.parametrize("key", ["clip_global_norm", "clip_value", "weight_decay"])
def test_negative_setting_raises(key):
  with pytest.raises(ValueError, match=key):
    train_state.make_optimizer(train_config(**{key: -1.0}))




def cosine_factor(t, num_steps, final):
  t = min(t, num_steps)
  return final + (1.0 - final) * 0.5 * (1.0 + np.cos(np.pi * t / num_steps))


@pytest.mark.parametrize("final", [0.0, 0.1])
def test_cosine_schedule_scales_each_step_by_the_half_cosine(final):
  # With a constant gradient Adam's bias-corrected moments are exactly g and g^2 at every
  # step, so step t's update is -lr g / (|g| + eps) times the schedule's factor at t.
  config = train_config(lr=1e-2, eps=1e-4)
  config.update(dict(lr_schedule="cosine", lr_final_fraction=final, num_steps=10))
  tx = train_state.make_optimizer(config)
  params = {k: jnp.zeros_like(jnp.asarray(x, jnp.float32)) for k, x in GRAD.items()}
  grads = {k: jnp.asarray(x, jnp.float32) for k, x in GRAD.items()}
  state = tx.init(params)
  base = hand_update(GRAD, 0.0, 0.0, lr=1e-2, eps=1e-4)
  for t in range(12):  # past num_steps the factor stays at lr_final_fraction
    updates, state = tx.update(grads, state, params)
    for k in GRAD:
      np.testing.assert_allclose(np.asarray(updates[k]), base[k] * cosine_factor(t, 10, final),
                                 rtol=2e-5, atol=1e-12)


def test_constant_schedule_adds_no_optimizer_state():
  # Checkpoints of runs from before the schedule existed keep their structure.
  config = train_config()
  params = {"a": jnp.zeros(2)}
  plain = train_state.make_optimizer(config).init(params)
  config.update(dict(lr_schedule="constant", num_steps=10))
  assert (jax.tree.structure(train_state.make_optimizer(config).init(params))
          == jax.tree.structure(plain))


@pytest.mark.parametrize("key,value,match", [("lr_schedule", "linear", "lr_schedule='linear'"),
                                             ("lr_final_fraction", 1.5, "lr_final_fraction=1.5")])
def test_bad_schedule_is_one_line_naming_it(key, value, match):
  config = train_config()
  config.update(dict(lr_schedule="cosine", lr_final_fraction=0.0, num_steps=10))
  config[key] = value
  with pytest.raises(ValueError, match=match):
    train_state.make_optimizer(config)


@pytest.mark.parametrize("kernel_init", ["lecun_normal", "normal"])
def test_jitted_init_gives_the_bytes_of_flaxs_eager_initializers(kernel_init):
  # Runs initialised before init was jitted must keep their parameters: the reference is
  # flax's own initializer applied eagerly, layer by layer.
  from flax import nnx
  from untapped_jax import models
  from untapped_jax.configs import default
  config = default.get_config()
  config.model.kernel_init, config.model.init_stddev = kernel_init, 1e-3
  config.model.hidden = (64,)
  _, _, state = train_state.create_train_state(config, seed=3)
  reference = (nnx.initializers.lecun_normal() if kernel_init == "lecun_normal"
               else nnx.initializers.normal(1e-3))
  keys = nnx.Rngs(jax.random.fold_in(jax.random.key(3), 1))  # Stream.INIT = 1
  model = models.M2(num_pixels=784, num_classes=10, latent_dim=config.model.latent_dim,
                    hidden=(64,), activation=config.model.activation, rngs=keys,
                    kernel_init=reference)
  expected = jax.tree.leaves(nnx.state(model, nnx.Param))
  got = jax.tree.leaves(state.params)
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
