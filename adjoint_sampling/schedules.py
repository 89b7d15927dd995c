"""Noise schedules of the base process dX = g(t) dB (X_0 = 0), time grids, and the bridge X_t | X_1.

h(t)^2 = ∫_0^t g^2 ds is the base marginal variance (Å^2); α(t)^2 = h(1)^2 - h(t)^2.
"""
from __future__ import annotations

import math

import torch


class NoiseSchedule:
    """Interface: g(t), h2(t) = h(t)^2 and alpha2(t) = α(t)^2 on tensors of times in [0, 1]."""

    def g(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def h2(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def h(self, t: torch.Tensor) -> torch.Tensor:
        return self.h2(t).sqrt()

    def alpha2(self, t: torch.Tensor) -> torch.Tensor:
        return self.h2(torch.ones_like(t)) - self.h2(t)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.alpha2(t).clamp_min(0).sqrt()

    @property
    def h1_sq(self) -> float:
        return float(self.h2(torch.tensor(1.0, dtype=torch.float64)))

    def t_of_h2(self, level: torch.Tensor, iters: int = 60) -> torch.Tensor:
        """Times t in [0, 1] with h(t)² = level (bisection: h² increases with t)."""
        lo, hi = torch.zeros_like(level), torch.ones_like(level)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            below = self.h2(mid) < level
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def bridge_params(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean coefficient and standard deviation of X_t | X_0 = 0, X_1 (per coordinate).

        X_t | X_1 ~ N(h_t^2 / h_1^2 · X_1, h_t^2 α_t^2 / h_1^2 · I).
        """
        h1_sq = self.h1_sq
        h2 = self.h2(t)
        coef = h2 / h1_sq
        var = (h2 * self.alpha2(t) / h1_sq).clamp_min(0)
        return coef, var.sqrt()


class GeometricSchedule(NoiseSchedule):
    """g(t) = σ_min r^(1-t) sqrt(2 ln r), r = σ_max/σ_min (the reference default)."""

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 1.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"geometric schedule needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.log_r = math.log(sigma_max / sigma_min)

    def g(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * torch.exp((1 - t) * self.log_r) * math.sqrt(2 * self.log_r)

    def h2(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_max**2 * -torch.expm1(-2 * t * self.log_r)

    def alpha2(self, t: torch.Tensor) -> torch.Tensor:
        # r^(-2t) - r^(-2), written to keep precision near t = 1
        return self.sigma_max**2 * (torch.exp(-2 * t * self.log_r) - math.exp(-2 * self.log_r))


class LinearSchedule(NoiseSchedule):
    """Constant g(t) = σ: Brownian motion, h(t) = σ sqrt(t)."""

    def __init__(self, sigma: float = 1.0):
        if sigma <= 0:
            raise ValueError(f"linear schedule needs sigma > 0, got {sigma}")
        self.sigma = sigma

    def g(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, self.sigma)

    def h2(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma**2 * t

    def alpha2(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma**2 * (1 - t)


def make_schedule(kind: str, sigma_min: float = 1e-3, sigma_max: float = 1.0, sigma: float = 1.0) -> NoiseSchedule:
    if kind == "geometric":
        return GeometricSchedule(sigma_min, sigma_max)
    if kind == "linear":
        return LinearSchedule(sigma)
    raise ValueError(f"unknown noise schedule '{kind}' (known: geometric, linear)")


def time_grid(kind: str, n_steps: int, dtype: torch.dtype = torch.float64,
              schedule: "NoiseSchedule | None" = None) -> torch.Tensor:
    """n_steps + 1 times from 0 to 1.

    uniform: equal steps. quadratic-linear: the first half of the steps linear on [0, 1/2],
    the second half refined quadratically toward t = 1 (step size shrinks linearly to ~0).
    variance: steps of equal base variance Δh² = h(1)²/n_steps (needs ``schedule``). The geometric
    schedule injects nearly all its variance early (on the torus with σ_max = π, 84 % by t = 0.2), so
    a uniform grid takes a few huge steps there (the first of 50 has std 1.3 rad) inside which the
    control is held fixed and cannot shape the distribution; equal-variance steps spread the control
    evenly over the noise it acts on.
    """
    if n_steps < 1:
        raise ValueError(f"need at least one integration step, got {n_steps}")
    if kind == "variance":
        if schedule is None:
            raise ValueError("the 'variance' time grid needs the noise schedule")
        levels = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64) * schedule.h1_sq
        grid = schedule.t_of_h2(levels)
        grid[0], grid[-1] = 0.0, 1.0
        return grid.to(dtype)
    if kind == "uniform":
        return torch.linspace(0, 1, n_steps + 1, dtype=dtype)
    if kind == "quadratic-linear":
        n_lin = max(n_steps // 2, 1)
        n_quad = n_steps - n_lin
        if n_quad == 0:
            return torch.linspace(0, 1, n_steps + 1, dtype=dtype)
        t_mid = 0.5
        lin = torch.linspace(0, t_mid, n_lin + 1, dtype=dtype)
        s = torch.linspace(0, 1, n_quad + 1, dtype=dtype)[1:]
        quad = 1 - (1 - t_mid) * (1 - s) ** 2
        return torch.cat([lin, quad])
    raise ValueError(f"unknown time grid '{kind}' (known: uniform, quadratic-linear, variance)")
