"""The NumPyro models' densities against scipy, term by term, and their forward simulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import Predictive
from numpyro.infer.util import log_density
from scipy import stats

from atomicspi.microscope import make_image_model
from atomicspi.models import ModelOptions, build_model_context, deformation, homogeneous, nma, nma_positions
from atomicspi.structure import load_structure

BOX, PIXEL = 16, 5.0


@pytest.fixture(scope="module")
def context(example_structure_path):
    structure = load_structure(example_structure_path).calpha()
    structure = structure.with_positions(structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0))
    image_model = make_image_model(structure.atomic_numbers, structure.b_factors_in_angstroms_squared, BOX, PIXEL)
    options = ModelOptions(noise_std_guess=0.7, contrast_guess=2.0, spring_constant_guess=0.3, latent_dim=2)
    return build_model_context(structure, image_model, n_modes=3, options=options)


def _clean_image(context, positions, batch, i):
    """The microscope called directly on particle i of a batch."""
    ctf_i = jax.tree_util.tree_map(lambda v: v[i] if jnp.ndim(v) else v, batch["ctf"])
    return np.asarray(
        context.image_model(jnp.asarray(positions), batch["rotations"][i], batch["shifts_in_angstroms"][i], ctf_i)
    )


def test_nma_log_joint_equals_scipy_term_by_term(context, model_batch):
    n_particles, batch_size = 10, 2
    batch = model_batch(batch_size)
    rng = np.random.default_rng(1)
    values = {
        "spring_constant": 0.4,
        "noise_std": 0.9,
        "amplitudes": rng.normal(size=(batch_size, 3)),
        "contrast": np.array([1.5, 2.5]),
    }
    images = rng.normal(size=(batch_size, BOX, BOX))
    with handlers.seed(rng_seed=0):
        log_joint, _ = log_density(
            nma, (), dict(images=jnp.asarray(images), context=context, n_particles=n_particles, **batch),
            {k: jnp.asarray(v) for k, v in values.items()},
        )

    # Independent: scipy densities, the microscope called directly, the plate scale N/B by hand.
    options = context.options
    eigenvalues = np.asarray(context.mode_eigenvalues)
    expected = stats.lognorm.logpdf(values["spring_constant"], 1.5, scale=options.spring_constant_guess)
    expected += stats.lognorm.logpdf(values["noise_std"], 1.0, scale=options.noise_std_guess)
    scale = n_particles / batch_size
    sigma = np.sqrt(options.temperature_factor / (values["spring_constant"] * eigenvalues))
    local = stats.norm.logpdf(values["amplitudes"], 0.0, sigma).sum()
    local += stats.lognorm.logpdf(values["contrast"], 0.5, scale=options.contrast_guess).sum()
    for i in range(batch_size):
        positions = np.asarray(context.reference_positions_in_angstroms) + np.einsum(
            "k,kbc->bc", values["amplitudes"][i], np.asarray(context.mode_vectors)
        )[np.asarray(context.atom_to_bead)]
        clean = _clean_image(context, positions, batch, i)
        local += stats.norm.logpdf(images[i], values["contrast"][i] * clean, values["noise_std"]).sum()
    expected += scale * local
    np.testing.assert_allclose(float(log_joint), expected, rtol=2e-5)


def test_nma_forward_simulation_has_the_prior_statistics(context, model_batch):
    """Prior predictive amplitudes have variance kT/(γλ) given γ; images are signal plus white noise."""
    n = 1200
    batch = model_batch(2)
    conditioned = handlers.condition(nma, {"spring_constant": 0.5, "noise_std": 0.3})
    draws = Predictive(conditioned, num_samples=n // 2)(
        jax.random.key(3), images=None, context=context, n_particles=2, **batch
    )
    amplitudes = np.asarray(draws["amplitudes"]).reshape(-1, 3)
    expected_variance = 1.0 / (0.5 * np.asarray(context.mode_eigenvalues))
    np.testing.assert_allclose(amplitudes.var(axis=0), expected_variance, rtol=0.15)  # 3.7 standard errors
    # Residual of one simulated image against its noise-free image is N(0, 0.3²).
    first = {k: np.asarray(v)[0] for k, v in draws.items()}
    positions = nma_positions(context, jnp.asarray(first["amplitudes"]))
    clean = np.stack([_clean_image(context, positions[i], batch, i) for i in range(2)])
    residual = first["images"] - first["contrast"][:, None, None] * clean
    assert stats.kstest(residual.ravel() / 0.3, "norm").pvalue > 1e-3


def test_homogeneous_and_deformation_priors_are_the_elastic_energy(context, model_batch):
    """homogeneous: a stretched structure costs exactly γ·E more than the reference (E computed by
    hand from the contact list). deformation: the factor `elastic_energy` is −γE(x(z))/kT − log Z
    with log Z the Laplace normaliser, all computed by hand."""
    from atomicspi.models import Decoder

    batch = model_batch(1)
    common = dict(images=None, context=context, n_particles=1, **batch)
    n_beads = context.n_beads
    displacement = np.zeros((n_beads, 3))
    displacement[0, 0] = 1.0  # pull one bead 1 Å along x
    reference = np.asarray(context.bead_positions_in_angstroms)
    pairs = np.asarray(context.network.pairs)
    rest = np.linalg.norm(reference[pairs[:, 0]] - reference[pairs[:, 1]], axis=1)
    moved = reference + displacement
    energy = 0.5 * np.sum((np.linalg.norm(moved[pairs[:, 0]] - moved[pairs[:, 1]], axis=1) - rest) ** 2)

    def factor(model, **values):
        trace = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=values)).get_trace(**common)
        return float(trace["elastic_energy"]["fn"].log_prob(trace["elastic_energy"]["value"]).sum())

    gamma = 0.7
    at_rest = factor(homogeneous, spring_constant=gamma, displacement=jnp.zeros((n_beads, 3)))
    stretched = factor(homogeneous, spring_constant=gamma, displacement=jnp.asarray(displacement))
    # The rigid-body restraint also sees this displacement: remove its part with the basis.
    from atomicspi.structure import rigid_body_basis

    basis = np.asarray(rigid_body_basis(jnp.asarray(reference))).reshape(6, -1)
    restraint = 0.5 * context.options.rigid_body_spring_constant * np.sum((basis @ displacement.ravel()) ** 2)
    # float32 sums over ~3,000 springs: measured 5e-6 relative; 1e-4 leaves a 20x margin.
    np.testing.assert_allclose(at_rest - stretched, gamma * energy + restraint, rtol=1e-4)

    # deformation: the factor is −γE(x(z))/kT − log Z, with log Z the Laplace approximation about
    # z = 0, −½ log det(I + γ JᵀKJ / kT), J = ∂x/∂z at 0 and K the dense Hessian of the energy.
    # Everything below is computed here: E by hand from the contact list, K by jax.hessian of that
    # hand-written energy, J by central finite differences of the decoder. kT ≠ 1 and a decoder
    # scaled up from its near-zero start, so that every term counts.
    import dataclasses

    import equinox as eqx

    from atomicspi.models import latent_elastic_log_normaliser

    temperature = 1.7
    warm = dataclasses.replace(context, options=dataclasses.replace(context.options, temperature_factor=temperature))
    decoder = Decoder(2, n_beads, key=jax.random.key(0))
    decoder = eqx.tree_at(
        lambda d: (d.linear.weight, d.mlp.layers[-1].weight),
        decoder,
        (decoder.linear.weight * 30.0, decoder.mlp.layers[-1].weight * 30.0),
    )
    weights = np.asarray(context.network.spring_weights, dtype=np.float64)

    def hand_energy(positions, array=np):
        differences = positions[pairs[:, 0]] - positions[pairs[:, 1]]
        stretch = array.sqrt(array.sum(differences**2, axis=-1)) - rest
        return 0.5 * array.sum(weights * stretch**2)

    step = 1e-2
    jacobian = np.stack(
        [
            (np.asarray(decoder(jnp.asarray(step * e)), np.float64) - np.asarray(decoder(jnp.asarray(-step * e)), np.float64))
            / (2 * step)
            for e in np.eye(2)
        ],
        axis=-1,
    ).reshape(3 * n_beads, 2)
    hessian = np.asarray(
        jax.hessian(lambda x: hand_energy(x.reshape(n_beads, 3), jnp))(jnp.asarray(reference.ravel())), np.float64
    )
    expected_log_normaliser = -0.5 * np.linalg.slogdet(np.eye(2) + gamma * jacobian.T @ hessian @ jacobian / temperature)[1]
    assert abs(expected_log_normaliser) > 0.5  # the normaliser matters at this scale
    # Measured 3e-8 relative; the bound is the central difference's O(step²) = 1e-4 error in J.
    np.testing.assert_allclose(
        float(latent_elastic_log_normaliser(warm, decoder, gamma)), expected_log_normaliser, rtol=1e-4
    )

    z = np.array([[0.8, -0.5]])
    bead_positions = reference + np.asarray(decoder(jnp.asarray(z[0])), np.float64)
    expected = -gamma * hand_energy(bead_positions) / temperature - expected_log_normaliser
    warm_common = dict(common, context=warm)
    trace = handlers.trace(
        handlers.substitute(handlers.seed(deformation, 0), data={"spring_constant": gamma, "z": jnp.asarray(z)})
    ).get_trace(decoder=decoder, **warm_common)
    assert trace["z"]["value"].shape == (1, 2)
    assert trace["images"]["value"].shape == (1, BOX, BOX)
    site = trace["elastic_energy"]
    value = np.asarray(site["fn"].log_prob(site["value"]))
    assert value.shape == (1,)
    # Measured 2e-7 relative (float32 energy, value ~ -23 nats); 1e-4 as for log Z (finite-difference J).
    np.testing.assert_allclose(value[0], expected, rtol=1e-4)

    # The pipeline's defaults (dataset.yaml spring_yield_in_angstroms 1.0, decoder_beads_per_block
    # 12): springs that yield, E = Σ w s²/2 · log(1 + δ²/s²) (written here from the formula of
    # Miyashita, Onuchic & Wolynes 2003, not from the package), and a block-rigid decoder. Its
    # Hessian at the reference is the harmonic one (d²/dδ² of s²/2 · log(1 + δ²/s²) is 1 at δ = 0),
    # so log Z has the same form with this decoder's own J. The decoder's weights are scaled so
    # that springs stretch by up to ~2 Å at this z: there the yielding energy is a third below the
    # harmonic one, so a prior that ignored the yield would be off by ~100 nats.
    from atomicspi.structure import BlockRigidMotion, block_rigid_basis

    yield_stretch = 1.0
    yielding = dataclasses.replace(
        warm, options=dataclasses.replace(warm.options, spring_yield_in_angstroms=yield_stretch)
    )
    rigid = Decoder(2, n_beads, key=jax.random.key(1), basis=block_rigid_basis(reference, 12), rigid_blocks=BlockRigidMotion(reference, 12))
    rigid = eqx.tree_at(lambda d: d.linear.weight, rigid, rigid.linear.weight * 300.0)

    def hand_yielding_energy(positions):
        differences = positions[pairs[:, 0]] - positions[pairs[:, 1]]
        stretch = np.sqrt(np.sum(differences**2, axis=-1)) - rest
        return 0.5 * np.sum(weights * yield_stretch**2 * np.log1p(stretch**2 / yield_stretch**2))

    rigid_jacobian = np.stack(
        [
            (np.asarray(rigid(jnp.asarray(step * e)), np.float64) - np.asarray(rigid(jnp.asarray(-step * e)), np.float64))
            / (2 * step)
            for e in np.eye(2)
        ],
        axis=-1,
    ).reshape(3 * n_beads, 2)
    rigid_log_normaliser = -0.5 * np.linalg.slogdet(np.eye(2) + gamma * rigid_jacobian.T @ hessian @ rigid_jacobian / temperature)[1]
    assert abs(rigid_log_normaliser) > 0.5  # the normaliser matters at this scale
    bead_positions = reference + np.asarray(rigid(jnp.asarray(z[0])), np.float64)
    assert hand_yielding_energy(bead_positions) < 0.8 * hand_energy(bead_positions)  # measured 0.68: the yield matters
    expected = -gamma * hand_yielding_energy(bead_positions) / temperature - rigid_log_normaliser
    trace = handlers.trace(
        handlers.substitute(handlers.seed(deformation, 0), data={"spring_constant": gamma, "z": jnp.asarray(z)})
    ).get_trace(decoder=rigid, **dict(common, context=yielding))
    site = trace["elastic_energy"]
    # Measured 2e-7 relative; rtol 1e-4 as above (float32 energy, finite-difference J). The value is
    # ~ -250 nats; a harmonic prior would give ~ -380.
    np.testing.assert_allclose(float(site["fn"].log_prob(site["value"])[0]), expected, rtol=1e-4)


def test_domains_model_moves_domains_rigidly_and_costs_elastic_energy(example_structure_path, model_batch):
    from atomicspi.models import domain_positions, domains

    structure = load_structure(example_structure_path).calpha()
    structure = structure.with_positions(structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0))
    image_model = make_image_model(structure.atomic_numbers, structure.b_factors_in_angstroms_squared, BOX, PIXEL)
    ranges = [[(30, 59)], [(1, 29), (60, 121), (160, 214)], [(122, 159)]]  # NMP, CORE, LID
    context = build_model_context(structure, image_model, n_modes=2, domain_residue_ranges=ranges)
    assert context.n_domains == 3
    numbers = np.arange(1, 215)
    core = ((numbers <= 29) | ((numbers >= 60) & (numbers <= 121)) | (numbers >= 160))
    np.testing.assert_array_equal(np.asarray(context.bead_domains) == 0, core)  # the largest domain is fixed

    motion = jnp.asarray([0.3, -0.2, 0.1, 0.0, 0.0, 0.0, 1.0, 2.0, -1.0, 0.0, 0.0, 0.0])  # rotate NMP, shift it
    moved = np.asarray(domain_positions(context, motion, jnp.zeros(2)))
    reference = structure.positions_in_angstroms
    np.testing.assert_allclose(moved[core], reference[core], atol=1e-5)
    lid = (numbers >= 122) & (numbers <= 159)
    np.testing.assert_allclose(moved[lid], reference[lid], atol=1e-5)
    nmp = ~core & ~lid
    def distances(x):
        return np.linalg.norm(x[:, None] - x[None], axis=-1)

    np.testing.assert_allclose(distances(moved[nmp]), distances(reference[nmp]), atol=1e-4)
    assert np.abs(moved[nmp] - reference[nmp]).max() > 3.0

    batch = model_batch(1)
    common = dict(images=None, context=context, n_particles=1, **batch)

    def factor(**values):
        trace = handlers.trace(handlers.substitute(handlers.seed(domains, 0), data=values)).get_trace(**common)
        return float(trace["elastic_energy"]["fn"].log_prob(trace["elastic_energy"]["value"]).sum())

    gamma = 0.3
    at_rest = factor(spring_constant=gamma, domain_motion=jnp.zeros((1, 12)), amplitudes=jnp.zeros((1, 2)))
    np.testing.assert_allclose(at_rest, 0.5 * 2 * np.log(gamma), rtol=1e-5)  # normaliser over the 2 modes
    # Rigid domain motions cost nothing (only springs inside domains count) ...
    moved_only = factor(spring_constant=gamma, domain_motion=motion[None], amplitudes=jnp.zeros((1, 2)))
    np.testing.assert_allclose(moved_only, at_rest, rtol=1e-5)
    # ... modes do: γ times the energy of the intra-domain springs, computed by hand.
    amplitudes = jnp.asarray([2.0, -1.5])
    bent = factor(spring_constant=gamma, domain_motion=motion[None], amplitudes=amplitudes[None])
    beads = np.asarray(domain_positions(context, motion, amplitudes))  # Cα model: atoms are the beads
    full = build_model_context(structure, image_model, n_modes=2).network
    pairs = np.asarray(full.pairs)
    domain_of = np.asarray(context.bead_domains)
    pairs = pairs[domain_of[pairs[:, 0]] == domain_of[pairs[:, 1]]]
    rest = np.linalg.norm(reference[pairs[:, 0]] - reference[pairs[:, 1]], axis=1)
    energy = 0.5 * np.sum((np.linalg.norm(beads[pairs[:, 0]] - beads[pairs[:, 1]], axis=1) - rest) ** 2)
    assert energy > 1.0
    np.testing.assert_allclose(at_rest - bent, gamma * energy, rtol=1e-4)


def _linear_decoder(n_beads, directions):
    """A Decoder whose MLP is switched off and whose linear map has the given columns `(n_beads, 3, d)`."""
    import equinox as eqx

    from atomicspi.models import Decoder

    latent_dim = directions.shape[-1]
    decoder = Decoder(latent_dim, n_beads, key=jax.random.key(0))
    decoder = eqx.tree_at(lambda d: d.linear.weight, decoder, jnp.asarray(directions.reshape(3 * n_beads, latent_dim)))
    last = decoder.mlp.layers[-1]
    return eqx.tree_at(lambda d: d.mlp.layers[-1].weight, decoder, jnp.zeros_like(last.weight))


def test_latent_normaliser_is_the_integral_of_the_boltzmann_factor(context):
    """One latent dimension: Z = ∫ N(z; 0, 1) exp(−γE(x⁰ + j z)/kT) dz by quadrature with the real
    (anharmonic) energy matches exp(log Z) for a small direction j; two dimensions: the determinant
    from the dense analytic Hessian of the structure module."""
    from scipy import integrate

    from atomicspi.models import latent_elastic_log_normaliser

    n_beads = context.n_beads
    rng = np.random.default_rng(3)
    gamma = 0.3
    direction = rng.normal(size=(n_beads, 3, 1)) * 0.05
    decoder = _linear_decoder(n_beads, direction)
    reference = np.asarray(context.bead_positions_in_angstroms, dtype=float)

    def integrand(z):
        energy = float(context.network.energy(jnp.asarray(reference + direction[..., 0] * z)))
        return stats.norm.pdf(z) * np.exp(-gamma * energy)

    expected = np.log(integrate.quad(integrand, -10, 10, limit=200)[0])
    got = float(latent_elastic_log_normaliser(context, decoder, gamma))
    assert got < -0.1  # the factor matters: not a vacuous comparison of two zeros
    np.testing.assert_allclose(got, expected, rtol=2e-3)

    directions = rng.normal(size=(n_beads, 3, 2)) * 0.2
    hessian = np.asarray(context.network.hessian(), dtype=float)
    columns = directions.reshape(3 * n_beads, 2)
    expected = -0.5 * np.linalg.slogdet(np.eye(2) + gamma * columns.T @ hessian @ columns)[1]
    got = float(latent_elastic_log_normaliser(context, _linear_decoder(n_beads, directions), gamma))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_deformation_factor_is_energy_minus_log_normaliser(context, model_batch):
    """The model's `elastic_energy` factor for a particle at latent z equals −γE(x(z)) − log Z."""
    from atomicspi.models import latent_elastic_log_normaliser

    batch = model_batch(2)
    common = dict(images=None, context=context, n_particles=2, **batch)
    n_beads = context.n_beads
    directions = np.random.default_rng(4).normal(size=(n_beads, 3, 2)) * 0.3
    decoder = _linear_decoder(n_beads, directions)
    z = np.array([[0.5, -1.0], [2.0, 0.3]])
    gamma = 0.2
    trace = handlers.trace(handlers.substitute(handlers.seed(deformation, 0), data={"z": z, "spring_constant": gamma}))
    trace = trace.get_trace(decoder=decoder, **common)
    factor = np.asarray(trace["elastic_energy"]["fn"].log_prob(trace["elastic_energy"]["value"]))
    reference = np.asarray(context.bead_positions_in_angstroms, dtype=float)
    energies = [float(context.network.energy(jnp.asarray(reference + directions @ zi))) for zi in z]
    expected = -gamma * np.array(energies) - float(latent_elastic_log_normaliser(context, decoder, gamma))
    np.testing.assert_allclose(factor, expected, rtol=1e-4)


def test_decoder_with_a_basis_moves_inside_it_and_starts_along_projected_motions(context):
    """With a basis, every decoded displacement (linear map and MLP) lies in its span, and
    `decoder_along_motions` makes decoder(e_j) the projection of direction j times its standard
    deviation (the MLP starts near zero)."""
    import equinox as eqx

    from atomicspi.models import Decoder, decoder_along_motions
    from atomicspi.structure import block_rigid_basis

    n_beads = context.n_beads
    reference = np.asarray(context.bead_positions_in_angstroms, dtype=float)
    basis = block_rigid_basis(reference, 5)
    flat = basis.reshape(basis.shape[0], -1)
    decoder = Decoder(3, n_beads, key=jax.random.key(1), basis=basis)
    # Large weights, so that the MLP's contribution is not negligible.
    decoder = eqx.tree_at(lambda d: d.mlp.layers[-1].weight, decoder, decoder.mlp.layers[-1].weight * 100.0)
    out = np.asarray(decoder(jnp.array([0.7, -1.2, 2.0])), dtype=float).ravel()
    assert np.linalg.norm(out) > 1e-2
    np.testing.assert_allclose(flat.T @ (flat @ out), out, atol=1e-4 * np.linalg.norm(out))
    rng = np.random.default_rng(5)
    directions = rng.normal(size=(2, n_beads, 3))
    directions /= np.linalg.norm(directions.reshape(2, -1), axis=1)[:, None, None]
    variances = np.array([4.0, 0.25])
    started = decoder_along_motions(Decoder(3, n_beads, key=jax.random.key(2), basis=basis), directions, variances)
    for j in range(2):
        got = np.asarray(started(jnp.eye(3)[j]), dtype=float).ravel()
        projected = flat.T @ (flat @ directions[j].ravel())
        np.testing.assert_allclose(got, np.sqrt(variances[j]) * projected, atol=0.05 * np.sqrt(variances[j]) * np.linalg.norm(projected))


def test_rigid_block_decoder_keeps_blocks_and_their_atoms_rigid(example_structure_path):
    """With `rigid_blocks`, whatever the latent (large weights, turns of tens of degrees), every
    block of beads moves rigidly together with the atoms of its residues (side chains turn with it):
    all distances between the atoms of a block are kept; without it, the same coefficients added
    as a linear field stretch them by Å. The bead displacements it returns are those of the moved beads."""
    import equinox as eqx

    from atomicspi.models import Decoder, decoded_structure
    from atomicspi.structure import BlockRigidMotion, block_rigid_basis

    structure = load_structure(example_structure_path)
    structure = structure.with_positions(structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0))
    image_model = make_image_model(structure.atomic_numbers, structure.b_factors_in_angstroms_squared, BOX, PIXEL)
    context = build_model_context(structure, image_model, n_modes=3, options=ModelOptions(latent_dim=2))
    beads = np.asarray(context.bead_positions_in_angstroms)
    basis, blocks = block_rigid_basis(beads, 12), BlockRigidMotion(beads, 12)
    rigid = Decoder(2, context.n_beads, key=jax.random.key(4), basis=basis, rigid_blocks=blocks)
    rigid = eqx.tree_at(lambda d: d.linear.weight, rigid, jax.random.normal(jax.random.key(5), rigid.linear.weight.shape) * 8.0)
    linear = eqx.tree_at(lambda d: d.rigid_blocks, rigid, None, is_leaf=lambda x: x is None)
    z = jnp.array([1.3, -0.8])
    block_of_atom = np.asarray(blocks.block_of_point)[np.asarray(context.atom_to_bead)]
    reference = np.asarray(context.reference_positions_in_angstroms)

    def largest_distance_change(positions):
        change = 0.0
        for block in range(blocks.n_blocks):
            members = block_of_atom == block
            before = np.linalg.norm(reference[members, None] - reference[None, members], axis=-1)
            after = np.linalg.norm(positions[members, None] - positions[None, members], axis=-1)
            change = max(change, float(np.max(np.abs(after - before))))
        return change

    displacements, atoms = decoded_structure(context, rigid, z)
    _, stretched = decoded_structure(context, linear, z)
    assert float(jnp.max(jnp.linalg.norm(displacements, axis=-1))) > 5.0  # large motions
    assert largest_distance_change(np.asarray(atoms, dtype=float)) < 2e-3
    assert largest_distance_change(np.asarray(stretched, dtype=float)) > 1.0
    np.testing.assert_allclose(np.asarray(rigid(z)), np.asarray(displacements), atol=1e-4)
    calpha_atoms = structure.topology.select("name CA and protein")  # the beads are the Cα atoms
    np.testing.assert_allclose(np.asarray(atoms)[calpha_atoms], beads + np.asarray(displacements), atol=1e-3)


def test_fine_fields_start_at_zero_and_add_their_field_to_beads_and_atoms(example_structure_path):
    """`Decoder.with_fine_fields` (the finer blocks the path pass refines) decodes exactly the same
    structures until its weights move; then every bead moves by √n_beads · Σ_k c_k basis_k on top of
    its block's rigid motion and every atom by its bead's share (or, with `atom_basis`, by its fine
    block's rigid motion), and the likelihood's gradient reaches the fine weights."""
    import equinox as eqx

    from atomicspi.models import Decoder, decoded_structure
    from atomicspi.structure import BlockRigidMotion, bead_turn_basis, block_rigid_basis, carried_block_rigid_basis

    structure = load_structure(example_structure_path)
    structure = structure.with_positions(structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0))
    image_model = make_image_model(structure.atomic_numbers, structure.b_factors_in_angstroms_squared, BOX, PIXEL)
    context = build_model_context(structure, image_model, n_modes=3, options=ModelOptions(latent_dim=2))
    beads = np.asarray(context.bead_positions_in_angstroms)
    decoder = Decoder(2, context.n_beads, key=jax.random.key(4), basis=block_rigid_basis(beads, 12), rigid_blocks=BlockRigidMotion(beads, 12))
    decoder = eqx.tree_at(lambda d: d.linear.weight, decoder, jax.random.normal(jax.random.key(5), decoder.linear.weight.shape) * 3.0)
    fine_basis = block_rigid_basis(beads, 4)
    fine = decoder.with_fine_fields(fine_basis, key=jax.random.key(6))
    z = jnp.array([0.7, -1.1])
    before_beads, before_atoms = decoded_structure(context, decoder, z)
    start_beads, start_atoms = decoded_structure(context, fine, z)
    np.testing.assert_array_equal(np.asarray(start_beads), np.asarray(before_beads))
    np.testing.assert_array_equal(np.asarray(start_atoms), np.asarray(before_atoms))

    coefficients = jax.random.normal(jax.random.key(7), (fine_basis.shape[0],)) * 0.05
    moved = eqx.tree_at(lambda d: d.fine_map.layers[-1].bias, fine, coefficients)
    field = np.sqrt(context.n_beads) * np.einsum("k,kbc->bc", np.asarray(coefficients), fine_basis)
    moved_beads, moved_atoms = decoded_structure(context, moved, z)
    np.testing.assert_allclose(np.asarray(moved_beads), np.asarray(before_beads) + field, atol=2e-4)
    np.testing.assert_allclose(
        np.asarray(moved_atoms), np.asarray(before_atoms) + field[np.asarray(context.atom_to_bead)], atol=2e-4
    )
    np.testing.assert_allclose(np.asarray(moved(z)), np.asarray(moved_beads), atol=2e-4)

    # With the fields carried to the atoms, every atom moves with its 4-bead block's rigid motion: the
    # translation and rotation that give the block's bead displacements (least squares, exact for a
    # rigid field) predict its atoms' displacements; an atom at its bead's position moves with it.
    atom_to_bead = np.asarray(context.atom_to_bead)
    reference_atoms = np.asarray(context.reference_positions_in_angstroms)
    atom_basis = carried_block_rigid_basis(beads, 4, reference_atoms, atom_to_bead)
    turning = eqx.tree_at(lambda d: d.fine_map.layers[-1].bias, decoder.with_fine_fields(fine_basis, key=jax.random.key(6), atom_basis=atom_basis),
                          coefficients)
    turned_beads, turned_atoms = decoded_structure(context, turning, z)
    np.testing.assert_allclose(np.asarray(turned_beads), np.asarray(moved_beads), atol=1e-5)
    atom_field = np.asarray(turned_atoms) - np.asarray(before_atoms)
    for start in range(0, context.n_beads, 4):
        members = np.arange(start, min(start + 4, context.n_beads))
        centre = beads[members].mean(axis=0)
        skew = lambda r: np.stack([np.cross(unit, r) for unit in np.eye(3)], axis=-1)  # ω × r = skew(r) @ ω  # noqa: E731
        design = np.concatenate([np.tile(np.eye(3), (len(members), 1)), skew(beads[members] - centre).reshape(-1, 3)], axis=1)
        motion, *_ = np.linalg.lstsq(design, field[members].reshape(-1), rcond=None)
        riders = np.flatnonzero((atom_to_bead >= start) & (atom_to_bead < start + 4))
        predicted = motion[:3] + np.cross(motion[3:], reference_atoms[riders] - centre)
        np.testing.assert_allclose(atom_field[riders], predicted, atol=2e-4)
    calpha = np.flatnonzero(np.linalg.norm(reference_atoms - beads[atom_to_bead], axis=1) < 1e-3)
    assert len(calpha) > 100
    np.testing.assert_allclose(atom_field[calpha], field[atom_to_bead[calpha]], atol=2e-4)

    # Atom-only fields after the carried ones (`bead_turn_basis`): their coefficients turn each
    # residue's atoms about its bead and leave every bead where the block fields put it.
    turns = bead_turn_basis(beads, reference_atoms, atom_to_bead)
    with_turns = decoder.with_fine_fields(fine_basis, key=jax.random.key(6), atom_basis=np.concatenate([atom_basis, turns]))
    turn_coefficients = jax.random.normal(jax.random.key(8), (turns.shape[0],)) * 0.05
    with_turns = eqx.tree_at(lambda d: d.fine_map.layers[-1].bias, with_turns, jnp.concatenate([coefficients, turn_coefficients]))
    turned_beads_2, turned_atoms_2 = decoded_structure(context, with_turns, z)
    np.testing.assert_allclose(np.asarray(turned_beads_2), np.asarray(turned_beads), atol=1e-5)
    turn_field = np.sqrt(context.n_beads) * np.einsum("k,kac->ac", np.asarray(turn_coefficients), turns)
    np.testing.assert_allclose(np.asarray(turned_atoms_2), np.asarray(turned_atoms) + turn_field, atol=2e-4)
    with pytest.raises(ValueError, match="fewer than"):
        decoder.with_fine_fields(fine_basis, key=jax.random.key(6), atom_basis=atom_basis[:-1])

    target = jnp.asarray(np.asarray(before_atoms) + 0.3)
    parameters, static = eqx.partition(fine, eqx.is_inexact_array)
    gradient = jax.grad(lambda p: jnp.sum((decoded_structure(context, eqx.combine(p, static), z)[1] - target) ** 2))(parameters)
    assert float(jnp.max(jnp.abs(gradient.fine_map.layers[-1].bias))) > 0.0


def test_particle_fluctuations_move_the_rendered_atoms_by_their_block_field(context, model_batch):
    """With `particle_fluctuation_in_angstroms`, the image the deformation model predicts is that of
    the decoded atoms plus Σ_k τ₀ e^offset u_k basis_k at each atom's bead (computed here directly),
    the fluctuation sites have standard normal priors, and τ₀ gives the requested root-mean-square
    bead displacement."""
    import dataclasses

    from atomicspi.models import Decoder, decoded_structure, fluctuation_scale
    from atomicspi.structure import block_rigid_basis

    reference = np.asarray(context.bead_positions_in_angstroms)
    basis = block_rigid_basis(reference, 12)
    options = dataclasses.replace(context.options, particle_fluctuation_in_angstroms=0.3, fluctuation_fields=basis.shape[0])
    fluctuating = dataclasses.replace(context, options=options)
    decoder = Decoder(2, context.n_beads, key=jax.random.key(7), basis=basis)
    scale = fluctuation_scale(fluctuating, decoder)
    # orthonormal fields: coefficients of sd τ₀ move the beads by τ₀ √(n_basis / n_beads) r.m.s. = 0.3 Å
    coefficients = np.random.default_rng(0).normal(size=(4000, basis.shape[0])) * scale
    rms = np.sqrt(np.mean(np.einsum("nk,kbc->nbc", coefficients, basis) ** 2) * 3.0)
    assert abs(rms - 0.3) < 0.003
    batch = model_batch(2)
    z = np.array([[0.5, -1.0], [2.0, 0.3]])
    u = np.random.default_rng(1).normal(size=(2, basis.shape[0]))
    offset = 0.4
    data = {"z": z, "fluctuation": u, "fluctuation_log_scale": offset, "contrast": np.ones(2)}
    trace = handlers.trace(handlers.substitute(handlers.seed(deformation, 0), data=data)).get_trace(
        images=None, context=fluctuating, n_particles=2, decoder=decoder, **batch
    )
    np.testing.assert_allclose(np.asarray(trace["fluctuation"]["fn"].log_prob(jnp.asarray(u))), stats.norm.logpdf(u).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(float(trace["fluctuation_log_scale"]["fn"].log_prob(offset)), stats.norm.logpdf(offset), rtol=1e-6)
    atom_to_bead = np.asarray(context.atom_to_bead)
    for i in range(2):
        _, decoded = decoded_structure(context, decoder, jnp.asarray(z[i]))
        field = np.einsum("k,kbc->bc", scale * np.exp(offset) * u[i], basis)[atom_to_bead]
        expected = _clean_image(context, np.asarray(decoded) + field, batch, i)
        predicted = np.asarray(trace["images"]["fn"].mean[i])
        np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        without = _clean_image(context, np.asarray(decoded), batch, i)
        assert np.abs(predicted - without).max() > 1e-2 * np.abs(expected).max()  # the field is seen
