"""Fit the rational tanh of mlx_model/layers.py: tanh(y) ~ y * P(y^2) / Q(y^2) on [0, 9], P of degree 6
and Q of degree 3 in y^2 with Q(0) = 1, minimising the relative error (Levenberg-Marquardt from the [7/6]
Pade approximant of Lambert's continued fraction, then Lawson reweighting toward the minimax fit).

    python scripts/fit_tanh.py      # prints the coefficients and the float32 error
"""

from __future__ import annotations

import numpy as np

LIMIT, N_P, N_Q = 9.0, 7, 4


def fit() -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (P, Q), lowest degree first."""
    y = np.concatenate([np.geomspace(1e-4, 1e-1, 300), np.linspace(0.1, LIMIT, 20000)])
    f, s = np.tanh(y), y * y
    theta = np.concatenate([np.array([135135, 17325, 378, 1, 0, 0, 0], float) / 135135,
                            np.array([62370, 3150, 28], float) / 135135])

    def parts(theta):
        p = np.polyval(theta[:N_P][::-1], s)
        q = np.polyval(np.concatenate([[1.0], theta[N_P:]])[::-1], s)
        return p, q, (y * p / q - f) / f

    weights, damping = np.ones_like(y), 1e-3
    for _ in range(40):
        for _ in range(50):
            p, q, r = parts(theta)
            jacobian = np.concatenate([(y / q / f)[:, None] * s[:, None] ** np.arange(N_P),
                                       (-(y * p / q ** 2) / f)[:, None] * s[:, None] ** np.arange(1, N_Q)], axis=1)
            a, b = jacobian * weights[:, None], r * weights
            scale = np.linalg.norm(a, axis=0)
            a = a / scale
            normal = a.T @ a
            step = np.linalg.solve(normal + damping * np.diag(np.diag(normal)), -(a.T @ b)) / scale
            if np.sum((parts(theta + step)[2] * weights) ** 2) < np.sum(b ** 2):
                theta, damping = theta + step, damping * 0.3
            else:
                damping = min(damping * 10, 1e8)
        weights = weights * np.sqrt(np.abs(parts(theta)[2]) / np.abs(parts(theta)[2]).max()) + 1e-12
        weights /= weights.max()
    return theta[:N_P], np.concatenate([[1.0], theta[N_P:]])


def float32_error(p: np.ndarray, q: np.ndarray) -> float:
    """Largest |approximation - tanh| over [-12, 12], evaluated in float32 as the kernel does."""
    y = np.linspace(-12, 12, 2_000_001).astype(np.float32)
    clipped = np.clip(y, -LIMIT, LIMIT)
    s = clipped * clipped
    num, den = np.float32(p[-1]), np.float32(q[-1])
    for c in p[-2::-1]:
        num = num * s + np.float32(c)
    for c in q[-2::-1]:
        den = den * s + np.float32(c)
    approx = np.clip(clipped * num / den, -1, 1)
    return float(np.abs(approx - np.tanh(y.astype(np.float64))).max())


if __name__ == "__main__":
    p, q = fit()
    print("P =", ", ".join(f"{c:.15e}" for c in p))
    print("Q =", ", ".join(f"{c:.15e}" for c in q))
    print("float32 max error:", float32_error(p, q))
