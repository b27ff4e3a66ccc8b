"""s2svr-lightning: S2SVR video restoration (ICML 2022) in PyTorch Lightning."""

__version__ = "0.1.0"
