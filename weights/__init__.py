"""Shipped model files (installed as ``tilediff.shipped_weights``); see each file's model card."""
