"""The atoms of the residual: ``X = sum_i c_i u_i v_i^T`` over the nuclear ball's extreme points.

Away-step and pairwise Frank-Wolfe (Guelat and Marcotte 1986; Lacoste-Julien and Jaggi
2015, Algorithms 1 and 2) need the active set: the atoms ``tau u_i v_i^T`` (unit ``u_i``,
``v_i``) with weights ``lambda_i = c_i / tau``, plus the zero matrix with weight
``lambda_0 = 1 - sum_i lambda_i`` (the ball is the convex hull of its extreme points and 0).
This module only keeps books; the weights ``W`` change through the chain's merge.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ActiveSet"]


class ActiveSet:
    """Atoms ``(u_i, v_i)`` and coefficients ``c_i >= 0`` with ``sum c_i <= tau``.

    Args:
        m, n: the matrix shape; tau: the ball's radius.
    """

    def __init__(self, m: int, n: int, tau: float) -> None:
        self.tau = float(tau)
        self.U = np.zeros((m, 0))
        self.V = np.zeros((n, 0))
        self.c = np.zeros(0)

    def __len__(self) -> int:
        return int(self.c.size)

    @property
    def zero_weight(self) -> float:
        """``lambda_0 = 1 - sum c_i / tau`` (clipped at 0)."""
        return max(0.0, 1.0 - float(self.c.sum()) / self.tau)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(B, A)`` with ``B @ A = X``: ``B = U diag(c)`` ``(m, k)``, ``A = V^T`` ``(k, n)``."""
        return self.U * self.c, self.V.T

    def _find(self, u: np.ndarray, v: np.ndarray) -> int | None:
        if not len(self):
            return None
        cu = self.U.T @ u
        cv = self.V.T @ v
        hit = np.nonzero((cu * cv) > 1.0 - 1e-10)[0]
        return int(hit[0]) if hit.size else None

    def add_frank_wolfe(self, B: np.ndarray, A: np.ndarray, gamma: float) -> None:
        """``X <- (1 - gamma) X + gamma B A``: a Frank-Wolfe step towards ``S = B @ A``.

        Each column pair ``(B[:, i], A[i])`` becomes the atom ``b_i a_i^T / (|b_i| |a_i|)``
        with coefficient ``gamma |b_i| |a_i|`` (merged into an equal active atom); for the
        LMO's ``S = -tau u v^T`` that is the atom ``(-u, v)`` with ``gamma tau``. Atoms whose
        coefficient falls to 0 are dropped (:meth:`prune`).

        Args:
            B: ``(m, k)``; A: ``(k, n)``; gamma: the step in ``[0, 1]``.
        """
        self.c *= 1.0 - gamma
        B = B * gamma
        for i in range(B.shape[1]):
            nb, na = float(np.linalg.norm(B[:, i])), float(np.linalg.norm(A[i]))
            if nb * na > 0:
                self._add(B[:, i] / nb, A[i] / na, nb * na)
        self.prune()

    def _add(self, u, v, amount: float) -> None:
        i = self._find(u, v)
        if i is None:
            self.U = np.column_stack([self.U, u])
            self.V = np.column_stack([self.V, v])
            self.c = np.append(self.c, amount)
        else:
            self.c[i] += amount

    def away_atom(self, G) -> tuple[int | None, float]:
        """``argmax`` over active atoms of ``<G, atom>``; ``None`` is the zero atom.

        Returns ``(index, <G, atom>)``. The zero atom (value 0) competes while its weight
        is positive.
        """
        best, value = None, -np.inf
        if len(self):
            vals = self.tau * np.sum(self.U * G.matmat(self.V), axis=0)
            i = int(np.argmax(vals))
            best, value = i, float(vals[i])
        if self.zero_weight > 1e-12 and value < 0.0:
            return None, 0.0
        return best, value

    def weight(self, index: int | None) -> float:
        """``lambda`` of an atom (``None``: the zero atom)."""
        return self.zero_weight if index is None else float(self.c[index]) / self.tau

    def atom_factors(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(B, A)`` of the atom ``tau u_i v_i^T``: ``(m, 1)`` and ``(1, n)``."""
        return (self.tau * self.U[:, index])[:, None], self.V[:, index][None, :]

    def away_step(self, index: int | None, gamma: float) -> None:
        """``X <- (1 + gamma) X - gamma * atom``."""
        self.c *= 1.0 + gamma
        if index is not None:
            self.c[index] -= gamma * self.tau
        self.prune()

    def pairwise_step(self, index: int | None, u: np.ndarray, v: np.ndarray, gamma: float) -> None:
        """``X <- X + gamma (tau u v^T - atom)``."""
        if index is not None:
            self.c[index] -= gamma * self.tau
        self._add(u, v, gamma * self.tau)
        self.prune()

    def prune(self, tol: float = 1e-12) -> None:
        """Drop atoms whose coefficient fell to ``<= tol * tau`` (a drop step)."""
        keep = self.c > tol * self.tau
        if not keep.all():
            self.U, self.V, self.c = self.U[:, keep], self.V[:, keep], self.c[keep]

    def set_svd(self, U: np.ndarray, s: np.ndarray, V: np.ndarray) -> None:
        """Replace the atoms by a thin SVD ``X = U diag(s) V^T`` (``sum s <= tau``)."""
        self.U, self.V, self.c = np.array(U), np.array(V), np.array(s, dtype=np.float64)
        self.prune()

    def state_dict(self) -> dict:
        return {"U": self.U.copy(), "V": self.V.copy(), "c": self.c.copy(), "tau": self.tau}

    def load_state_dict(self, state: dict) -> None:
        self.U, self.V, self.c, self.tau = state["U"].copy(), state["V"].copy(), state["c"].copy(), state["tau"]
