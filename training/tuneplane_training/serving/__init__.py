"""Serving fine-tuned models: the scoring core shared by the local inference server
(``python -m tuneplane_training.serving``) and the Azure ML online deployment (``score.py``).

Importing this package loads no model and no torch; the control plane never imports it.
"""
