"""The XLA:CPU fast path must compute what the plain compiler does (forward and gradients)."""

import functools
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dr_jax import build, config, data, evaluate, optim, steps, train, xla
from dr_jax.errors import UserError


def test_fast_options_only_on_cpu_and_only_when_enabled():
  assert xla.compiler_options(False) is None
  expected = xla.FAST_CPU_OPTIONS if jax.default_backend() == "cpu" else None
  assert xla.compiler_options(True) == expected


def _config(model_name: str):
  if model_name == "strided":
    return config.load_config(pathlib.Path(__file__).parents[1] / "experiments" / "strided.py")
  return config.get_base_config()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are XLA:CPU's")
# Gradients (and so SGD's updates) may differ by this share of their leaf's largest entry (plus
# a small absolute term): weight gradients are float32 sums of thousands of terms (batch ×
# positions) that the two compiles order differently, and the order depends on the ISA's vector
# width. Measured with `XLA_FLAGS=--xla_cpu_max_isa=AVX2` and AVX-512 on one AVX-512 EPYC: up to
# ~5e-4 of the leaf's scale for the strided model's batch-norm and first layers; an AVX2-only EPYC
# showed ~4× more. A wrong fast path (padding, stride, layout) is off by O(1) of the scale.
@pytest.mark.parametrize("model_name, grad_scale_tol", [("classic", 0.0), ("strided", 5e-3)])
def test_fast_cpu_step_equals_plain_step(model_name, grad_scale_tol):
  """Loss, logits' gradients and updated parameters agree within float32 reassociation."""
  cfg = _config(model_name)
  cfg.optimizer.name = "sgd"
  model = build.model(cfg)
  state = steps.create_state(model, optim.make_optimizer(cfg, 10), jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8))
  targets = jnp.asarray(data.one_hot(rng.integers(0, 10, 16), 10))
  step = functools.partial(steps.train_step, preprocess=steps.Preprocess())
  outs = {}
  for name, options in (("plain", None), ("fast", xla.FAST_CPU_OPTIONS)):
    fn = jax.jit(step, compiler_options=options)
    outs[name] = fn(state, images, targets, jax.random.key(1))
  (plain, m_plain), (fast, m_fast) = outs["plain"], outs["fast"]
  assert float(m_fast["loss"]) == pytest.approx(float(m_plain["loss"]), rel=1e-5)
  for a, b, before in zip(jax.tree.leaves(fast.params), jax.tree.leaves(plain.params),
                         jax.tree.leaves(state.params)):
    # SGD's update is lr × gradient (Adam's or RMSprop's first step would blow near-zero
    # gradients' float32 noise up to ±lr): the gradients' tolerance below, times lr.
    update = np.abs(np.asarray(b) - np.asarray(before)).max()
    np.testing.assert_allclose(a, b, atol=cfg.optimizer.lr * 1e-3 + grad_scale_tol * update)
  variables = steps.variables(state)
  grad = lambda options: jax.jit(jax.grad(
      lambda p: jnp.sum(model.apply({**variables, "params": p}, images / 255.0) ** 2)),
      compiler_options=options)(state.params)
  for a, b in zip(jax.tree.leaves(grad(xla.FAST_CPU_OPTIONS)), jax.tree.leaves(grad(None))):
    np.testing.assert_allclose(a, b, rtol=1e-4,
                               atol=1e-6 + grad_scale_tol * float(np.abs(b).max()))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are XLA:CPU's")
@pytest.mark.parametrize("model_name", ["classic", "strided"])
def test_fast_cpu_predict_equals_plain_predict(model_name):
  """The predict program compiled with the fast options gives the plain compile's probabilities."""
  cfg = _config(model_name)
  state = train.init_state(cfg, optim.make_optimizer(cfg, 1), jax.random.key(0))
  images = np.random.default_rng(0).integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
  probs = {}
  for fast in (False, True):
    predictor = evaluate.Predictor(build.model(cfg).apply, steps.variables(state),
                                   build.preprocess(cfg, 0.0, 255.0, train=False), 1,
                                   fast_cpu=fast)
    probs[fast] = predictor.probabilities(images, batch_size=20)
  np.testing.assert_allclose(probs[True], probs[False], rtol=1e-5, atol=1e-6)


def test_an_option_this_jaxlib_lacks_is_dropped_with_one_line(monkeypatch, capsys):
  xla.supported.cache_clear()
  monkeypatch.setattr(xla, "FAST_CPU_OPTIONS", {"xla_cpu_option_from_another_jaxlib": "1"})
  assert xla.compiler_options(True) is None
  assert xla.compiler_options(True) is None
  err = capsys.readouterr().err
  assert err.count("\n") == 1, err  # Said once, however many programs compile.
  assert err.startswith(f"dr-jax: this jaxlib ({jax.__version__}) does not accept the CPU fast "
                        "path's XLA options (")
  assert "xla_cpu_option_from_another_jaxlib" in err and err.endswith("XLA's defaults instead\n")
  # A program compiled with the options left out runs.
  assert float(jax.jit(jnp.sum).lower(jnp.ones(3)).compile(
      compiler_options=xla.compiler_options(True))(jnp.ones(3))) == 3.0
  xla.supported.cache_clear()


def test_the_shipped_options_are_accepted_by_this_jaxlib(capsys):
  xla.supported.cache_clear()
  assert xla.supported(tuple(xla.FAST_CPU_OPTIONS.items()))
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("setting", ["off", "0", "false", "NO", "none"])
def test_cache_dir_off(monkeypatch, setting):
  monkeypatch.setenv(xla.CACHE_ENV, setting)
  assert xla.cache_dir() is None


def test_cache_dir_named_or_in_the_users_cache_per_cpu(monkeypatch, tmp_path):
  monkeypatch.setenv(xla.CACHE_ENV, str(tmp_path / "mine"))
  assert xla.cache_dir() == tmp_path / "mine"
  monkeypatch.delenv(xla.CACHE_ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  path = xla.cache_dir()
  assert path is not None and path.parent == tmp_path / "xdg" / "dr_jax" / "jax"
  assert path.name.startswith(platform.machine() + "-")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert xla.cache_dir() == tmp_path / "home" / ".cache" / "dr_jax" / "jax" / path.name


@pytest.fixture
def no_cache_configured():
  """JAX's cache directory unset for the test (the suite's own is put back after)."""
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  yield
  jax.config.update("jax_compilation_cache_dir", before)


def test_use_compilation_cache_turns_the_cache_on_or_keeps_the_one_set(
    monkeypatch, tmp_path, no_cache_configured):
  monkeypatch.setenv(xla.CACHE_ENV, "off")
  assert xla.use_compilation_cache() is None
  assert jax.config.jax_compilation_cache_dir is None
  monkeypatch.setenv(xla.CACHE_ENV, str(tmp_path / "cache"))
  assert xla.use_compilation_cache() == tmp_path / "cache"
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
  assert (tmp_path / "cache").is_dir()
  monkeypatch.setenv(xla.CACHE_ENV, str(tmp_path / "other"))
  assert xla.use_compilation_cache() == tmp_path / "cache"  # Already on: kept.


def test_an_unwritable_cache_place_compiles_without_a_cache(monkeypatch, tmp_path,
                                                            no_cache_configured):
  (tmp_path / "file").write_text("")
  monkeypatch.setenv(xla.CACHE_ENV, str(tmp_path / "file" / "cache"))
  assert xla.use_compilation_cache() is None
  assert jax.config.jax_compilation_cache_dir is None


@pytest.mark.parametrize("flags, isa", [
    ("flags : fpu sse4_2 avx avx2 fma", "AVX2"),
    ("flags : sse4_2 avx avx2 avx512f avx512bw", "AVX512"),
    ("flags : sse2 sse4_2", "SSE4_2"), ("Features : fp asimd", platform.machine())])
def test_cpu_isa_is_the_widest_the_cpu_reports(flags, isa):
  assert xla.cpu_isa(flags) == isa


def test_limit_isa_sets_xla_flags_once_and_names_the_limit(monkeypatch, tmp_path):
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_cpu_max_isa=AVX")
  monkeypatch.setattr(xla, "cpu_isa", lambda flags=None: "AVX512")
  xla.limit_isa("avx2")
  assert xla.isa_limit() == "AVX2"
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_max_isa=AVX2"
  assert xla.describe_isa() == "AVX2 (limited by XLA_FLAGS; the CPU has AVX512)"
  monkeypatch.delenv(xla.CACHE_ENV, raising=False)  # The user's cache: its name has the limit.
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  limited = xla.cache_dir()
  assert limited is not None and limited.name.endswith("-avx2")
  monkeypatch.delenv("XLA_FLAGS")
  assert xla.describe_isa() == "AVX512" and xla.cache_dir() == limited.with_name(
      limited.name.removesuffix("-avx2"))
  with pytest.raises(UserError, match="--isa AVX3: choose one of SSE4_2, AVX, AVX2, AVX512"):
    xla.limit_isa("avx3")
