"""NumPyro generative models (installed as `atomicspi.models`)."""
