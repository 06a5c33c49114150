"""gpubp: neural networks trained by backpropagation on NVIDIA GPUs (CuPy) or
the CPU (NumPy), with one API and the same numbers."""

from . import optim
from .backends import BackendUnavailableError, available_backends, get_backend
from .gradcheck import gradcheck
from .model import MLP
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "Trainer",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "gradcheck",
    "optim",
]
