"""jssl: self-supervised learning and knowledge transfer in JAX/Flax."""

__version__ = "0.1.0"
