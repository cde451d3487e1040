"""DMD features against known linear systems and a float64 numpy exact-DMD reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import dmd

RANK = 3
tensor_dmd = jax.jit(dmd.tensor_dmd, static_argnums=2)
tensor_features = jax.jit(dmd.tensor_features, static_argnums=2)


def linear_system(n=12, steps=9, seed=0):
    """z_t = C y_t, y_{t+1} = A y_t; A has eigenvalues 0.9 and 0.8 exp(+-0.5i)."""
    rng = np.random.default_rng(seed)
    th = 0.5
    A = np.array([[0.9, 0, 0],
                  [0, 0.8 * np.cos(th), -0.8 * np.sin(th)],
                  [0, 0.8 * np.sin(th), 0.8 * np.cos(th)]])
    C = rng.normal(size=(n, 3))
    y = rng.normal(size=3)
    zs = []
    for _ in range(steps):
        zs.append(C @ y)
        y = A @ y
    return A, np.stack(zs, axis=-1)


def sort_eigs(lam):
    lam = np.asarray(lam)
    return lam[np.lexsort((lam.imag, -np.abs(lam).round(5)))]


def test_eigenvalues_of_a_known_linear_system_incl_complex_pair():
    A, Z = linear_system()
    d = tensor_dmd(jnp.asarray(Z[:, :8], jnp.float32), 8, RANK)
    got, want = sort_eigs(d.eigenvalues), sort_eigs(np.linalg.eigvals(A))
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.sum(np.abs(np.imag(got)) > 0.3) == 2          # the conjugate pair is found
    # features: |lambda| and |arg lambda|/pi, sorted by magnitude
    f = np.asarray(tensor_features(jnp.asarray(Z[:, :8], jnp.float32), 8, RANK))
    np.testing.assert_allclose(f[0, :3], [0.9, 0.8, 0.8], atol=1e-4)
    np.testing.assert_allclose(f[0, 3:6], [0.0, 0.5 / np.pi, 0.5 / np.pi], atol=1e-4)
    np.testing.assert_allclose(f[:, :6], np.broadcast_to(f[0, :6], (12, 6)))  # per-tensor channels broadcast


def test_forecast_predicts_the_next_snapshot_of_a_linear_system():
    _, Z = linear_system()
    window = Z[:, :8]
    d = tensor_dmd(jnp.asarray(window, jnp.float32), 8, RANK)
    scale = np.sqrt(np.mean(window ** 2, axis=0)).max()      # the window is scaled by its largest column RMS
    np.testing.assert_allclose(np.asarray(d.forecast) * scale, Z[:, 8], atol=1e-4 * np.abs(Z[:, 8]).max())
    f = np.asarray(tensor_features(jnp.asarray(window, jnp.float32), 8, RANK))
    rms_last = np.sqrt(np.mean(window[:, -1] ** 2))
    np.testing.assert_allclose(f[:, 6], Z[:, 8] / rms_last, rtol=1e-3, atol=1e-4)


def numpy_exact_dmd(Z, r):
    """Float64 textbook exact DMD with an SVD: eigenvalues, mode-1 contribution at z_m, forecast."""
    Z = Z / np.sqrt(np.mean(Z ** 2, axis=0)).max()
    X, Xp = Z[:, :-1], Z[:, 1:]
    U, S, Vh = np.linalg.svd(X, full_matrices=False)
    U, S, V = U[:, :r], S[:r], Vh[:r].T
    At = U.T @ Xp @ V / S
    lam, W = np.linalg.eig(At)
    order = np.argsort(-np.abs(lam))
    lam, W = lam[order], W[:, order]
    x_last = U.T @ Z[:, -1]
    b = np.linalg.lstsq(W, x_last, rcond=None)[0]
    return lam, np.abs((U @ W[:, 0]) * b[0]), U @ (At @ x_last)


def test_matches_a_float64_svd_reference_on_a_generic_window():
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(40, 7)).cumsum(axis=1)               # a random walk: full rank, real-ish spectrum
    d = tensor_dmd(jnp.asarray(Z, jnp.float32), 7, RANK)
    lam, mode1, forecast = numpy_exact_dmd(Z, RANK)
    np.testing.assert_allclose(sort_eigs(d.eigenvalues), sort_eigs(lam), atol=2e-3)
    np.testing.assert_allclose(np.asarray(d.mode1), mode1, rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(np.asarray(d.forecast), forecast, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name,window,mag1,ang1", [
    ("constant", np.ones((5, 8)), 1.0, 0.0),
    ("geometric rank 1", np.outer(np.arange(1, 6), 0.5 ** np.arange(8)), 0.5, 0.0),
    ("sign flipping", np.outer(np.arange(1, 6), (-1.0) ** np.arange(8)), 1.0, 1.0),
])
def test_rank_deficient_windows_are_finite_and_right(name, window, mag1, ang1):
    f = np.asarray(tensor_features(jnp.asarray(window, jnp.float32), 8, RANK))
    assert np.all(np.isfinite(f)), name
    np.testing.assert_allclose(f[0, 0], mag1, atol=1e-4)
    np.testing.assert_allclose(f[0, 3], ang1, atol=1e-4)
    np.testing.assert_allclose(f[0, [1, 2, 4, 5]], 0.0, atol=1e-6)   # masked directions: lambda = 0


def test_empty_partial_and_scalar_windows_are_finite():
    for count in (0, 1, 2):
        f = tensor_features(jnp.asarray(np.random.default_rng(count).normal(size=(4, 6)), jnp.float32),
                            count, RANK)
        assert np.all(np.isfinite(np.asarray(f)))
    assert np.all(np.asarray(tensor_features(jnp.zeros((4, 6)), 6, RANK)) == 0.0)
    st = dmd.init({"w": jnp.zeros((3, 4)), "s": jnp.zeros(())}, 6)
    for t in range(3):
        st = dmd.push(st, {"w": jnp.full((3, 4), 0.5 ** t), "s": jnp.asarray(2.0 ** t)})
    assert int(st.count) == 3
    np.testing.assert_allclose(st.snapshots["s"], [0, 0, 0, 1, 2, 4])
    f = jax.jit(dmd.features, static_argnums=1)(st, RANK)
    assert f["w"].shape == (3, 4, dmd.num_features(RANK)) and f["s"].shape == (dmd.num_features(RANK),)
    np.testing.assert_allclose(f["w"][0, 0, 0], 0.5, atol=1e-5)      # geometric decay 0.5
    np.testing.assert_allclose(f["s"][0], 2.0, atol=1e-5)            # growth x2 per step (|lambda| clipped at 2)
    assert np.all(np.isfinite(np.asarray(f["s"])))


def test_no_gradient_flows_and_vmaps():
    _, Z = linear_system()
    w = jnp.asarray(Z[:, :8], jnp.float32)
    g = jax.grad(lambda x: jnp.sum(dmd.tensor_features(x, 8, RANK)))(w)
    assert np.all(np.asarray(g) == 0.0)
    batch = jnp.stack([w, 2.0 * w, -w])
    fb = jax.vmap(lambda x: dmd.tensor_features(x, 8, RANK))(batch)
    np.testing.assert_allclose(fb[1], fb[0], rtol=1e-4, atol=1e-5)   # scale invariant
    np.testing.assert_allclose(fb[2][:, :6], fb[0][:, :6], atol=1e-5)


def test_validate():
    dmd.validate(0, 3)
    dmd.validate(8, 3)
    for window, rank in [(2, 1), (4, 4), (-1, 3), (8, 0), (8.0, 3)]:
        with pytest.raises(learned_opt.LearnedOptError):
            dmd.validate(window, rank)
