"""kdcicam: a reproducibility harness for KD-CI-CAM (WSOL via causal knowledge distillation)."""

__version__ = "0.1.0"
