"""Amortized variational inference (installed as `atomicspi.inference`)."""
