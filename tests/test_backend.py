"""Array-namespace dispatch, input checks and the SVD drivers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from strategies import BACKENDS, to_backend, to_numpy, torch

from ttdecomp import _backend as B
from ttdecomp.errors import BackendMismatchError, InvalidInputError


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(6, 200), (200, 6), (30, 40)])
@pytest.mark.parametrize("method", ["svd", "qr", "auto"])
def test_left_svd_paths_agree_with_lapack(backend, shape, method):
    a = np.random.default_rng(0).standard_normal(shape)
    u, s = B.left_svd(to_backend(a, backend), method)
    s_ref = np.linalg.svd(a, compute_uv=False)
    assert np.allclose(to_numpy(s), s_ref, rtol=1e-12, atol=1e-12)
    u = to_numpy(u)
    # U spans the dominant left singular subspace: ‖Uᴴ a‖ keeps all the energy
    assert np.isclose(np.linalg.norm(u.T @ a), np.linalg.norm(a), rtol=1e-12)
    assert np.allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-12)


def test_gram_path_accuracy_limit_is_as_documented():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    v, _ = np.linalg.qr(rng.standard_normal((500, 8)))
    s = np.logspace(0, -12, 8)
    a = (u * s) @ v.T
    _, s_gram = B.left_svd(a, "gram")
    _, s_qr = B.left_svd(a, "qr")
    assert np.allclose(s_qr, s, rtol=1e-6)
    big = s > 1e-6  # above √u·σ_max the Gram path is accurate
    assert np.allclose(s_gram[big], s[big], rtol=1e-6)


def test_svd_fallback_on_non_convergence(monkeypatch):
    import scipy.linalg

    calls = []
    real = scipy.linalg.svd

    def flaky(a, **kw):
        calls.append(kw["lapack_driver"])
        if kw["lapack_driver"] == "gesdd":
            raise np.linalg.LinAlgError("SVD did not converge")
        return real(a, **kw)

    monkeypatch.setattr(scipy.linalg, "svd", flaky)
    a = np.random.default_rng(2).standard_normal((5, 4))
    with pytest.warns(UserWarning, match="gesvd"):
        u, s, vh = B.svd(a)
    assert calls == ["gesdd", "gesvd"]
    assert np.allclose((u * s) @ vh, a)


def test_check_array_messages():
    with pytest.raises(BackendMismatchError, match="dtype int32"):
        B.check_array(np.ones(3, dtype=np.int32), "W")
    with pytest.raises(InvalidInputError, match="W contains 2 NaN or Inf entries"):
        B.check_array(np.array([1.0, np.nan, np.inf]), "W")
    with pytest.raises(BackendMismatchError, match="must be an array"):
        B.check_array([1.0, 2.0])
    assert B.check_array(np.ones(0)) is not None  # empty arrays have nothing to check


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_mixed_namespaces_rejected():
    with pytest.raises(BackendMismatchError, match=r"numpy\.ndarray, torch\.Tensor"):
        B.get_namespace(np.ones(2), torch.ones(2))


def test_import_without_torch_and_without_global_state():
    code = textwrap.dedent(
        """
        import sys, warnings, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch blocked for this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        import scipy.linalg  # scipy adds its own warning filters when imported
        filters = list(warnings.filters)
        opts = np.get_printoptions()
        import ttdecomp as tt
        x = tt.tt_svd(np.random.default_rng(0).standard_normal((4, 5, 6)), eps=0.1)
        m = tt.random_ttm((2, 3), (3, 2), 2, seed=0)
        y = m.apply(np.ones((4, 6)))
        assert "torch" not in sys.modules
        assert warnings.filters == filters and np.get_printoptions() == opts
        print("ok", x.ranks, y.shape)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
