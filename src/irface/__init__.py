"""irface: train, evaluate, export and serve face-recognition embedding models in PyTorch."""

__version__ = "0.1.0"
