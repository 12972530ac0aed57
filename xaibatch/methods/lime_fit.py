"""LIME's surrogate: the kernel weights of the masks and B weighted ridge fits at once, and how settled each is.

As the ``lime`` package's ``LimeImageExplainer`` with its defaults: distances = cosine distance of each mask to
the all-ones mask, kernel ``sqrt(exp(-d**2 / 0.25**2))``, ``Ridge(alpha=1, fit_intercept=True)`` on all
features; solved in float64 closed form. Images with fewer superpixels are padded with always-off columns,
which after weighted centring are exactly zero and so change neither the real coefficients nor (computed over
real features only) the distances.
"""

from __future__ import annotations

import math

import torch

KERNEL_WIDTH = 0.25  # lime_image.LimeImageExplainer's default
RIDGE_ALPHA = 1.0  # lime_base's default Ridge(alpha=1)


def cosine_distances_to_ones(z: torch.Tensor, n_features: torch.Tensor) -> torch.Tensor:
    """Return the cosine distance of each (zero-padded) mask row to the all-ones row of its real features.

    For binary z with k ones among F features: 1 - k / (sqrt(k) sqrt(F)) = 1 - sqrt(k / F),
    and 1 for an all-zero row (sklearn's convention for a zero vector).
    """
    k = z.to(torch.float64).sum(dim=-1)
    return 1.0 - torch.sqrt(k / n_features.to(torch.float64)[:, None])


def kernel_weights(distances: torch.Tensor, width: float = KERNEL_WIDTH) -> torch.Tensor:
    """Apply lime's exponential kernel ``sqrt(exp(-d**2 / width**2))``."""
    return torch.sqrt(torch.exp(-(distances**2) / width**2))


def weighted_ridge(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float = RIDGE_ALPHA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve B weighted ridge regressions at once, as sklearn's ``Ridge(fit_intercept=True)`` with sample weights.

    z: (B, S, F) design, y: (B, S) targets, w: (B, S) sample weights. Returns
    coefficients (B, F), intercepts (B,) and the weighted R^2 (B,), all float64.
    Centre by the weighted means, then solve (Zc' W Zc + alpha I) b = Zc' W yc.
    """
    z, y, w = z.to(torch.float64), y.to(torch.float64), w.to(torch.float64)
    sw = w.sum(dim=1, keepdim=True)
    z_mean = (w[..., None] * z).sum(dim=1, keepdim=True) / sw[..., None]
    y_mean = (w * y).sum(dim=1, keepdim=True) / sw
    zc = z - z_mean
    yc = y - y_mean
    zw = zc * w[..., None]
    eye = torch.eye(z.shape[2], dtype=torch.float64, device=z.device)
    a = zw.transpose(1, 2) @ zc + alpha * eye
    b = (zw.transpose(1, 2) @ yc[..., None])[..., 0]
    coef = torch.linalg.solve(a, b)
    intercept = y_mean[:, 0] - (z_mean[:, 0] * coef).sum(dim=1)
    resid = yc - (zc @ coef[..., None])[..., 0]
    ss_res = (w * resid**2).sum(dim=1)
    ss_tot = (w * yc**2).sum(dim=1)
    perfect = torch.where(ss_res == 0, torch.ones_like(ss_res), torch.zeros_like(ss_res))
    r2 = torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot.clamp_min(1e-300), perfect)  # sklearn's force_finite
    return coef, intercept, r2


def coefficient_noise(
    z: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    coef: torch.Tensor,
    intercept: torch.Tensor,
    counts: torch.Tensor,
    alpha: float = RIDGE_ALPHA,
) -> torch.Tensor:
    """How unsettled each of B weighted ridge fits still is: the coefficients' RMS standard error over their spread.

    The standard errors are the heteroscedasticity-robust (HC1 sandwich) ones of :func:`weighted_ridge`'s fit,
    ``A^-1 (Zc' diag(w^2 r^2) Zc) A^-1 * S / (S - F - 1)`` with ``A = Zc' W Zc + alpha I``: how much the
    coefficients would move under a fresh draw of the same number of masks. Returns (B,) float64: their root
    mean square over the image's real features divided by the coefficients' standard deviation across those
    features; 0 when every standard error is 0 (an exact fit), inf when the coefficients are all equal but not
    exact. Padded (always-off) features have zero columns after centring and count for nothing.
    """
    z, y, w = z.to(torch.float64), y.to(torch.float64), w.to(torch.float64)
    sw = w.sum(dim=1, keepdim=True)
    zc = z - (w[..., None] * z).sum(dim=1, keepdim=True) / sw[..., None]
    resid = y - intercept[:, None] - (z @ coef[..., None])[..., 0]
    eye = torch.eye(z.shape[2], dtype=torch.float64, device=z.device)
    a_inv = torch.linalg.inv((zc * w[..., None]).transpose(1, 2) @ zc + alpha * eye)
    g = zc * (w * resid)[..., None]
    cov = a_inv @ (g.transpose(1, 2) @ g) @ a_inv
    n = counts.to(torch.float64)
    dof = (z.shape[1] / (z.shape[1] - n - 1).clamp_min(1.0))[:, None]
    real = (torch.arange(z.shape[2], device=z.device)[None, :] < counts[:, None]).to(torch.float64)
    se2 = torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0) * dof * real
    rms_se = torch.sqrt(se2.sum(dim=1) / n)
    mean = (coef * real).sum(dim=1, keepdim=True) / n[:, None]
    spread = torch.sqrt((((coef - mean) * real) ** 2).sum(dim=1) / n)
    ratio = rms_se / spread.clamp_min(1e-300)
    return torch.where(
        rms_se == 0, torch.zeros_like(ratio), torch.where(spread > 0, ratio, torch.full_like(ratio, math.inf))
    )
