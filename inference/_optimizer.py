"""The optimizer: Adam for shared parameters, and a larger step for per-particle parameters."""

import jax
import optax

__all__ = ["make_optimizer"]

_PER_PARTICLE_PARAMETERS = ("local_offsets",)


def make_optimizer(
    learning_rate: float, per_particle_learning_rate: float | None = None, decay_steps: int | None = None
) -> optax.GradientTransformation:
    """Adam with one learning rate for the shared parameters (encoder, decoder, globals) and another
    for per-particle parameters.

    A particle's own parameters only get a gradient when it is in the minibatch, once per epoch,
    while Adam moves a parameter by about one learning rate per update; with the shared rate they
    would barely leave their initial values in a few dozen epochs. The per-particle rate defaults
    to 20× the shared one.

    **Arguments:**

    - `learning_rate`: Adam step size of the shared parameters.
    - `per_particle_learning_rate`: Adam step size of the per-particle parameters (`local_offsets`).
    - `decay_steps`: when given, both rates decay along a cosine to 1 % over this many steps.

    **Returns:** an optax transformation over NumPyro's parameter dict.
    """
    per_particle = 20.0 * learning_rate if per_particle_learning_rate is None else per_particle_learning_rate

    def adam(rate):
        return optax.adam(rate if decay_steps is None else optax.cosine_decay_schedule(rate, decay_steps, alpha=0.01))

    def label_leaves(name, value):
        label = "particle" if name in _PER_PARTICLE_PARAMETERS else "shared"
        return jax.tree_util.tree_map(lambda _: label, value)

    def labels(parameters):
        return {name: label_leaves(name, value) for name, value in parameters.items()}

    return optax.multi_transform({"shared": adam(learning_rate), "particle": adam(per_particle)}, labels)
