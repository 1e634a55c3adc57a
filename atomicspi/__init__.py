"""atomicspi: Bayesian inference of molecular motion from single-particle images.

Data flows one way: files (`atomicspi.io`) → dataset → model (`atomicspi.models`, built on
`atomicspi.structure` and `atomicspi.microscope`) → guide and SVI (`atomicspi.inference`) →
posterior → products (`atomicspi.products`).
"""

__version__ = "0.1.0"
