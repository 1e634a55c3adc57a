"""Boltzmann priors: mode amplitudes N(0, kT/(γλ)) and the free-form exp(−E/kT) density."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
import scipy.linalg
import scipy.stats

from atomicspi.structure import (
    ElasticNetwork,
    elastic_network_log_prior,
    load_structure,
    mode_amplitude_prior,
    normal_modes,
    rigid_body_basis,
)


@pytest.fixture(scope="module")
def adk_calpha(example_structure_path):
    return load_structure(example_structure_path).calpha().positions_in_angstroms


def test_mode_amplitude_prior_density(x64, adk_calpha):
    network = ElasticNetwork.from_positions(adk_calpha, 15.0)
    eigenvalues = normal_modes(network, 10).eigenvalues
    prior = mode_amplitude_prior(eigenvalues, spring_constant=2.5, temperature_factor=1.7)
    amplitudes = np.linspace(-1.0, 1.0, 10)
    expected = scipy.stats.norm(0.0, np.sqrt(1.7 / (2.5 * np.asarray(eigenvalues)))).logpdf(amplitudes).sum()
    np.testing.assert_allclose(float(prior.log_prob(amplitudes)), expected, rtol=1e-12)
    assert prior.event_shape == (10,)


def test_mode_samples_obey_equipartition(x64, adk_calpha):
    """Under the mode prior the mean elastic energy is (n_modes/2)·kT (harmonic equipartition); a stiff
    γ keeps displacements small so the anharmonic part of the ANM energy is negligible."""
    network = ElasticNetwork.from_positions(adk_calpha, 15.0)
    modes = normal_modes(network, 12)
    gamma, temperature = 40.0, 1.3
    samples = mode_amplitude_prior(modes.eigenvalues, gamma, temperature).sample(jax.random.key(0), (4000,))
    energies = jax.vmap(lambda a: network.energy(network.reference_positions_in_angstroms + modes.displacements(a), gamma))(samples)
    mean, error = float(jnp.mean(energies)), float(jnp.std(energies)) / np.sqrt(4000)
    assert abs(mean - 12 * temperature / 2) < 4 * error + 0.01


def test_free_form_prior_is_the_normalised_harmonic_density(x64, adk_calpha):
    """Near the reference, log p(x) + ½ Σ log λₖ equals the Gaussian log-density with precision
    (γ H + κ B Bᵀ)/τ (B: rigid-body basis), for several γ, τ: the γ, τ normaliser is right."""
    positions = adk_calpha[:30]
    network = ElasticNetwork.from_positions(positions, 15.0)
    hessian = np.asarray(network.hessian(1.0))
    eigenvalues = np.linalg.eigvalsh(hessian)[6:]
    basis = np.asarray(rigid_body_basis(positions)).reshape(6, -1)
    displacement = 1e-3 * np.random.default_rng(0).normal(size=positions.shape)
    kappa = 0.01
    for gamma, temperature in ((1.0, 1.0), (3.0, 0.5), (0.2, 2.0)):
        precision = (gamma * hessian + kappa * basis.T @ basis) / temperature
        expected = scipy.stats.multivariate_normal(np.zeros(precision.shape[0]), scipy.linalg.inv(precision)).logpdf(displacement.ravel())
        ours = elastic_network_log_prior(network, positions + displacement, gamma, temperature, kappa) + 0.5 * np.sum(np.log(eigenvalues))
        np.testing.assert_allclose(float(ours), expected, rtol=1e-6)


def test_priors_in_numpyro_models_with_learnable_spring_constant(x64, adk_calpha):
    """γ as a latent variable: each model's log joint matches the hand sum and is differentiable in γ."""
    network = ElasticNetwork.from_positions(adk_calpha, 15.0)
    modes = normal_modes(network, 5)
    reference = network.reference_positions_in_angstroms

    def mode_model():
        gamma = numpyro.sample("gamma", numpyro.distributions.LogNormal(0.0, 1.0))
        numpyro.sample("amplitudes", mode_amplitude_prior(modes.eigenvalues, gamma))

    def free_form_model():
        gamma = numpyro.sample("gamma", numpyro.distributions.LogNormal(0.0, 1.0))
        positions = numpyro.sample("positions", numpyro.distributions.ImproperUniform(numpyro.distributions.constraints.real, (), reference.shape))
        numpyro.factor("elastic_energy", elastic_network_log_prior(network, positions, gamma))

    amplitudes = jnp.full(5, 0.3)
    positions = reference + modes.displacements(amplitudes)
    log_gamma_prior = scipy.stats.lognorm(1.0).logpdf(2.0)
    cases = (
        (mode_model, {"amplitudes": amplitudes}, scipy.stats.norm(0, np.sqrt(1 / (2.0 * np.asarray(modes.eigenvalues)))).logpdf(0.3).sum()),
        (free_form_model, {"positions": positions}, float(elastic_network_log_prior(network, positions, 2.0))),
    )
    for model, values, expected in cases:
        log_joint, _ = numpyro.infer.util.log_density(model, (), {}, {**values, "gamma": 2.0})
        np.testing.assert_allclose(float(log_joint), log_gamma_prior + expected, rtol=1e-10)
        gradient = jax.grad(lambda g: numpyro.infer.util.log_density(model, (), {}, {**values, "gamma": g})[0])(2.0)
        assert np.isfinite(float(gradient)) and float(gradient) != 0.0
