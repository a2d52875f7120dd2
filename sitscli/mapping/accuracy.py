"""Accuracy of a class map against reference samples, and area estimates with confidence intervals.

Notation (Olofsson, Foody, Herold, Stehman, Woodcock, Wulder 2014, "Good practices for estimating
area and assessing accuracy of land change", Remote Sensing of Environment 148:42-57, Section 4):
rows i are the MAP classes, columns j the REFERENCE classes.

    n_ij   reference samples mapped as i whose reference class is j; n_i. and n_.j the margins
    N_i    pixels the map gives to class i (counted over the whole map)
    W_i    N_i / sum N: the share of the mapped area in map class i (the stratum weight)

Two sets of figures come out:
- `sample_accuracy`: the counts taken as they are. Overall accuracy (OA) with a 95 % interval from
  the normal approximation of the binomial, OA +- z sqrt(OA (1 - OA) / n); Cohen's kappa; per class
  the user's accuracy n_ii / n_i., producer's accuracy n_jj / n_.j and F1 2 n_kk / (n_k. + n_.k).
- `area_adjusted`: the stratified estimators of Olofsson et al. (2014), strata = map classes, which
  weigh each row by its mapped area so that a sample that over-represents a class (as a stratified
  sample of a rare change class does on purpose) does not bias the figures:
      p_ij = W_i n_ij / n_i.                                              (eq. 4)
      O = sum_j p_jj,  U_i = p_ii / p_i.,  P_j = p_jj / p_.j             (eq. 1, 2, 3)
      V(O)   = sum_i W_i^2 U_i (1 - U_i) / (n_i. - 1)                     (eq. 5)
      V(U_i) = U_i (1 - U_i) / (n_i. - 1)                                 (eq. 6)
      V(P_j) = 1 / N_.j^2 [ N_j.^2 (1 - P_j)^2 U_j (1 - U_j) / (n_j. - 1)
               + P_j^2 sum_{i != j} N_i.^2 n_ij / n_i. (1 - n_ij / n_i.) / (n_i. - 1) ]   (eq. 7)
          with N_.j = sum_i N_i. n_ij / n_i., the estimated pixels of reference class j
      p_.k = sum_i W_i n_ik / n_i.  (area share of class k)                (eq. 9)
      S(p_.k) = sqrt( sum_i W_i^2 n_ik / n_i. (1 - n_ik / n_i.) / (n_i. - 1) )   (eq. 10)
      area_k = A p_.k and S(area_k) = A S(p_.k), A the mapped area.
  95 % intervals are estimate +- 1.96 S (the paper's z). These hold for simple random, systematic
  or stratified random (by map class) samples of pixels.

Undefined values are NaN, never 0: a class without samples has no user's (or producer's)
accuracy, a variance needs two samples in a stratum (n_i. - 1 = 0 gives 0/0), kappa is undefined
when chance agreement is 1. A map class with mapped pixels but no sample cannot be estimated at
all; its area is left out of the population the area-adjusted figures describe (`population_share`
says how much of the mapped area they cover) rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z_95 = 1.96  # two-sided 95 % normal quantile, as used by Olofsson et al. (2014)


def confusion_counts(map_class: np.ndarray, reference_class: np.ndarray, num_classes: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Counts (K, K) int64, rows = map class, columns = reference class, from (n,) class indices
    0..K-1 each; `weights` (n,) counts each pair that many times (pairs already tallied)."""
    flat = np.asarray(map_class, np.int64) * num_classes + np.asarray(reference_class, np.int64)
    counts = np.bincount(flat, weights=weights, minlength=num_classes * num_classes)
    return np.rint(counts).astype(np.int64).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with NaN where den is 0 (0/0 and x/0 are undefined, not 0)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


@dataclass
class SampleAccuracy:
    """Figures of the counts as they are (each sample weighs the same). Arrays are (K,)."""

    samples: int
    overall: float
    overall_ci: float      # half-width of the 95 % interval (normal approximation of the binomial)
    kappa: float
    users: np.ndarray      # n_ii / n_i.
    producers: np.ndarray  # n_jj / n_.j
    f1: np.ndarray         # 2 n_kk / (n_k. + n_.k)


def sample_accuracy(counts: np.ndarray, z: float = Z_95) -> SampleAccuracy:
    """OA with its interval, Cohen's kappa, per-class user's / producer's accuracy and F1 of counts (K, K)
    (rows map, columns reference)."""
    counts = np.asarray(counts, float)
    n = counts.sum()
    diagonal, rows, columns = np.diag(counts), counts.sum(1), counts.sum(0)
    overall = float(_ratio(diagonal.sum(), n))
    # Cohen (1960): kappa = (p_o - p_e) / (1 - p_e), p_e the agreement expected from the margins
    chance = float(_ratio((rows * columns).sum(), n * n))
    return SampleAccuracy(
        samples=int(n), overall=overall,
        overall_ci=float(z * np.sqrt(overall * (1 - overall) / n)) if n else float("nan"),
        kappa=float(_ratio(overall - chance, 1 - chance)),
        users=_ratio(diagonal, rows), producers=_ratio(diagonal, columns), f1=_ratio(2 * diagonal, rows + columns))


@dataclass
class AreaAdjusted:
    """Stratified (by map class) estimates of Olofsson et al. (2014). Arrays are (K,) unless said.

    `*_ci` are half-widths of 95 % intervals; areas are in the unit of `pixel_area` (pixels when 1).
    """

    weights: np.ndarray        # W_i over the sampled map classes (NaN for those left out)
    proportions: np.ndarray    # (K, K) estimated area proportions p_ij (eq. 4)
    overall: float
    overall_ci: float
    users: np.ndarray
    users_ci: np.ndarray
    producers: np.ndarray
    producers_ci: np.ndarray
    area_share: np.ndarray     # p_.k (eq. 9)
    area_share_ci: np.ndarray
    area: np.ndarray           # A p_.k
    area_ci: np.ndarray
    unsampled: np.ndarray      # (K,) bool: mapped pixels but no reference sample: left out
    population_share: float    # share of the mapped pixels in sampled map classes


def area_adjusted(counts: np.ndarray, mapped_pixels: np.ndarray, *, pixel_area: float = 1.0,
                  z: float = Z_95) -> AreaAdjusted:
    """Olofsson et al. (2014) estimators from sample counts (K, K) (rows map, columns reference) and
    the pixels the map gives each class, mapped_pixels (K,). See the module docstring for the formulas."""
    counts = np.asarray(counts, float)
    mapped = np.asarray(mapped_pixels, float)
    k = counts.shape[0]
    n_row = counts.sum(1)
    sampled = n_row > 0
    unsampled = (mapped > 0) & ~sampled
    population = np.where(sampled, mapped, 0.0)
    total = population.sum()
    if total == 0:  # no sampled map class covers any mapped pixel: nothing can be estimated
        nan_k, nan = np.full(k, np.nan), float("nan")
        return AreaAdjusted(np.zeros(k), np.full((k, k), np.nan), nan, nan, nan_k, nan_k, nan_k, nan_k, nan_k,
                            nan_k, nan_k, nan_k, unsampled, 0.0)
    weights = population / total
    share = np.where(sampled[:, None], _ratio(counts, n_row[:, None]), 0.0)    # n_ij / n_i.
    proportions = weights[:, None] * share                                     # eq. 4
    users = np.where(sampled, np.diag(share), np.nan)                          # eq. 2 (= n_ii / n_i.)
    column = proportions.sum(0)                                                # p_.j (eq. 9)
    producers = _ratio(np.diag(proportions), column)                           # eq. 3
    # 1 / (n_i. - 1): NaN for a single sample (variance undefined), 0 for unsampled rows (weight 0)
    inverse = np.where(sampled, _ratio(1.0, n_row - 1), 0.0)
    row_var = share * (1 - share) * inverse[:, None]                           # (K, K) per-stratum terms
    overall = float(np.trace(proportions))
    var_overall = np.sum(np.where(sampled, weights**2 * users * (1 - users) * inverse, 0.0))   # eq. 5
    var_users = users * (1 - users) * inverse                                                # eq. 6
    var_share = np.sum(weights[:, None] ** 2 * row_var, axis=0)                               # eq. 10
    var_producers = _producer_variance(population, producers, row_var, total * column)
    return AreaAdjusted(
        weights=np.where(unsampled, np.nan, weights), proportions=np.where(sampled[:, None], proportions, np.nan),
        overall=overall, overall_ci=float(z * np.sqrt(var_overall)),
        users=users, users_ci=z * np.sqrt(var_users), producers=producers, producers_ci=z * np.sqrt(var_producers),
        area_share=column, area_share_ci=z * np.sqrt(var_share),
        area=total * column * pixel_area, area_ci=z * np.sqrt(var_share) * total * pixel_area,
        unsampled=unsampled, population_share=float(total / mapped.sum()))


def _producer_variance(population: np.ndarray, producers: np.ndarray, row_var: np.ndarray,
                       reference_pixels: np.ndarray) -> np.ndarray:
    """V(P_j) of eq. 7, (K,). population = N_i. (0 for unsampled rows), reference_pixels = N_.j and
    row_var[i, j] = n_ij/n_i. (1 - n_ij/n_i.) / (n_i. - 1), whose diagonal is U_j (1 - U_j) / (n_j. - 1)."""
    weighted = population[:, None] ** 2 * row_var                                  # N_i.^2 x row term
    own = (1 - producers) ** 2 * np.diag(weighted)
    others = np.where(np.eye(len(population), dtype=bool), 0.0, weighted).sum(0)  # sum over i != j
    return _ratio(own + producers**2 * others, reference_pixels**2)
