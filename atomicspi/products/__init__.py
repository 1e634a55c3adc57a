"""Posterior products: free-energy landscapes with error bars, states, atomic ensembles, kinetics.

**Thermodynamics from images, kinetics from an assumption.** Single-particle images are snapshots
of an equilibrium ensemble: the aggregated posterior (the mixture of per-particle posteriors)
estimates populations, hence free energies F = −kT ln p, state populations and their bootstrap
uncertainty. Images carry no time. The Markov state model and mean first-passage times here rest
on the assumption of overdamped diffusion on F with a user-set diffusion coefficient D (or must
come from MD); their time unit is that of D, (CV unit)² / D.
"""

from .._quiet import quiet_c_stdout
from ._aggregated_posterior import aggregated_posterior_probabilities as aggregated_posterior_probabilities
from ._aggregated_posterior import (
    bootstrap_aggregated_posterior_probabilities as bootstrap_aggregated_posterior_probabilities,
)
from ._aggregated_posterior import sample_aggregated_posterior as sample_aggregated_posterior
from ._basins import LandscapeBasins as LandscapeBasins
from ._basins import find_basins as find_basins
from ._diffusion_model import DiffusionModel as DiffusionModel
from ._diffusion_model import diffusion_model as diffusion_model
from ._first_passage import mean_first_passage_times as mean_first_passage_times
from ._first_passage import state_mean_first_passage_times as state_mean_first_passage_times
from ._free_energy import FreeEnergyLandscape as FreeEnergyLandscape
from ._free_energy import free_energy_landscape as free_energy_landscape
from ._free_energy import landscape_from_probabilities as landscape_from_probabilities
from ._grid import CollectiveVariableGrid as CollectiveVariableGrid
from ._grid import make_grid as make_grid
from ._markov_state_model import markov_state_model as markov_state_model
from ._plot import plot_landscape as plot_landscape
from ._poses import PoseSummaries as PoseSummaries
from ._poses import mean_rotations as mean_rotations
from ._poses import pose_draws as pose_draws
from ._poses import pose_summaries as pose_summaries
from ._reconstruction import backproject as backproject
from ._reconstruction import fourier_shell_correlation as fourier_shell_correlation
from ._reconstruction import resolution_at as resolution_at
from ._reconstruction import write_map as write_map
from ._representatives import representative_particles as representative_particles
from ._run_collective_variables import RunCollectiveVariables as RunCollectiveVariables
from ._run_collective_variables import default_collective_variable as default_collective_variable
from ._run_collective_variables import load_run_collective_variables as load_run_collective_variables
from ._run_products import run_products as _run_products_printing

# mdtraj's DCD reader prints two lines for every file it opens, and `run_products` opens one per
# structure it writes: C code's standard output is discarded while it runs (Python's is kept).
run_products = quiet_c_stdout()(_run_products_printing)
