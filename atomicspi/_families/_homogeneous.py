"""`model: homogeneous`: one structure for all particles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._family import FittedModel, ModelFamily

__all__ = ["Homogeneous"]

_DISPLACEMENT_INITIAL_SCALE_IN_ANGSTROMS = 0.05
# Adam moves the displacement's mean by about this × the learning rate per step. The 642 bead
# displacements of AdK are coupled by the stiff network, and the fit creeps along the soft modes: on
# 32 Cα images of a 2 Å motion along the three softest modes (24², 4 Å/px, SNR 1, default 2,000
# steps at 1e-3) the fitted structure ended 1.74 Å from the truth with unit 1, 1.21 Å with 10 and
# 1.07 Å with 30 (tests/test_families.py).
_DISPLACEMENT_UNIT_IN_ANGSTROMS = 30.0


class Homogeneous(ModelFamily):
    """`homogeneous`: the bead displacements of one structure are a global site
    (`atomicspi.models.homogeneous`); no per-particle conformation, so no landscape."""

    name = "homogeneous"
    landscape_coordinate = None

    @property
    def model(self):
        from atomicspi.models import homogeneous

        return homogeneous

    def local_sites(self, context) -> dict:
        return {}

    def global_sites(self, context) -> dict:
        from atomicspi.inference import GlobalSite

        return {"displacement": GlobalSite((context.n_beads, 3), _DISPLACEMENT_INITIAL_SCALE_IN_ANGSTROMS, _DISPLACEMENT_UNIT_IN_ANGSTROMS)}

    def positions(self, fitted: FittedModel, local: dict, global_: dict):
        context = fitted.model_arguments["context"]
        loc = _DISPLACEMENT_UNIT_IN_ANGSTROMS * jnp.asarray(fitted.parameters["displacement_loc"])
        mean = np.asarray(context.atoms_from_bead_displacements(loc))
        samples = np.asarray(jax.vmap(context.atoms_from_bead_displacements)(jnp.asarray(global_["displacement"])))

        def of(particles):
            n = len(particles)
            return np.broadcast_to(mean, (n, *mean.shape)), np.broadcast_to(samples[None], (n, *samples.shape))

        return of
