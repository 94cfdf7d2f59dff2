"""dr_jax: the Kaggle Digit Recognizer with JAX, Flax, optax and orbax."""

__version__ = "0.1.0"
