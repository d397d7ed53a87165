"""Choose a refinement's number of clusters from its clustering space, without labels.

``RefineConfig.k``: None keeps the number of clusters of the run refined; ``"auto"`` tries
:data:`AUTO_RANGE`, ``"LOW:HIGH"`` (or ``"LOW:HIGH:STEP"``, or one ``"K"``) the ks given.
:func:`choose_k` scores every candidate k on the space round 0 clusters in (the UMAP of the
pre-trained embedding joined with the pixel components) and keeps one by :data:`RULE`.

The rule reads the BIC of a full-covariance GMM with k components fitted on the (sampled)
rows: the k of least BIC when the curve has its minimum inside the range, else (the BIC
still falls at the largest k, as it does on UMAP spaces, whose tight non-Gaussian clumps
always reward one more component) the elbow of the BIC curve, the k farthest below the
chord from its first to its last point (:func:`cci_core.cluster.choose_k.elbow`). The elbow
depends on the range: the default is :data:`AUTO_RANGE`.

Also recorded per k, not used by the rule (they are there to compare rules on a new corpus):
split-half stability (the rows cut in two random halves, a GMM fitted on each, both label
every row; the adjusted Rand index of the two labellings, over ``repeats`` cuts) and the
smallest share (the smallest cluster's size times k over the rows; 1 = all equal). Measured
on digits (three small SimCLR starts and the default one) and on 10,000 Fashion-MNIST test
images (a short start), stability alone picks too few clusters where two classes share a
clump (digits: k = 7 and 8 reproduce perfectly, ARI 1.000) and is flat within its noise on
Fashion-MNIST (0.80-0.92 for k = 6..20); the BIC rule chose 10, 10, 9 and 9 (digits; the
weakest starts 9) and 9 (Fashion-MNIST).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cci_core.cluster.choices import parse_k_range

AUTO_RANGE = (4, 20)
START_K = 10  # the clustering a pipeline refines when the refinement chooses k (`cci run` without -k)
RULE = "least GMM BIC, or its elbow when the BIC still falls at the largest k"


def parse_k_option(value) -> list[int] | None:
    """The candidate ks of ``RefineConfig.k``: None (the given run's k), ``"auto"``
    (:data:`AUTO_RANGE`), ``"LOW:HIGH[:STEP]"`` or ``"K"``; a bad value is a ValueError
    naming it and the forms taken."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "auto":
        return list(range(AUTO_RANGE[0], AUTO_RANGE[1] + 1))
    try:
        return parse_k_range(text)
    except ValueError as exc:
        raise ValueError(f"k={value!r}: use auto, a range LOW:HIGH such as 5:20, or one number ({exc})") from None


@dataclass(frozen=True)
class KChoice:
    """The choice of k: ``k`` chosen by ``rule`` among ``candidates``; ``scores`` one
    ``{k, bic, min_share, sizes, stability, stability_sd}`` per candidate; ``seconds`` it took."""
    k: int
    rule: str
    candidates: list
    scores: list
    seconds: float

    def to_json(self) -> dict:
        return {"k": self.k, "rule": self.rule, "candidates": list(self.candidates),
                "scores": list(self.scores), "seconds": self.seconds}

    def summary(self) -> str:
        """One line: ``chose 10 of 4..20 by the least GMM BIC, or ... (BIC -58947 at 9, BIC
        -64946 at 10, BIC -67046 at 11, stability 0.930)``."""
        return choice_line(self.to_json())


def choice_line(d: dict) -> str:
    """:meth:`KChoice.summary` of a recorded choice (its JSON dict)."""
    by_k = {s["k"]: s for s in d["scores"]}
    ks = sorted(by_k)
    span = f"{ks[0]}..{ks[-1]}" if len(ks) > 1 else str(ks[0])
    k = d["k"]
    shown = [f"BIC {by_k[j]['bic']:.0f} at {j}" for j in (k - 1, k, k + 1) if j in by_k]
    if by_k[k].get("stability") is not None:
        shown.append(f"stability {by_k[k]['stability']:.3f}")
    return f"chose {k} of {span} by the {d['rule']} ({', '.join(shown)})"


def split_half_stability(U: np.ndarray, k: int, seed: int, repeats: int = 3,
                         sample: int = 20000) -> tuple[float, float]:
    """Mean and s.d. over ``repeats`` random halvings of the ARI between the labellings of
    two k-component GMMs, each fitted on one half of a ``sample``-row sample of ``U`` (N, d)."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture
    rng = np.random.default_rng(seed)
    S = U[np.sort(rng.choice(len(U), sample, replace=False))] if len(U) > sample else U
    aris = []
    for rep in range(repeats):
        perm = rng.permutation(len(S))
        halves = (perm[: len(S) // 2], perm[len(S) // 2:])
        labs = [GaussianMixture(k, covariance_type="full", random_state=seed + 2 * rep + i)
                .fit(S[h]).predict(S) for i, h in enumerate(halves)]
        aris.append(adjusted_rand_score(*labs))
    return float(np.mean(aris)), float(np.std(aris))


def choose_k(U: np.ndarray, candidates, seed: int = 0, repeats: int = 3, sample: int = 20000) -> KChoice:
    """Choose k among ``candidates`` by the BIC of GMMs on ``U`` (see :data:`RULE`).

    Parameters
    ----------
    U : (N, d) float, the space the partition is found in (no labels)
    candidates : list of int k, each in [2, N / 4]
    seed : every fit and halving derives from it (same seed, same choice)
    repeats, sample : halvings per k for the reported stability (0: none), and the rows
        (a seeded sample) every score is computed on

    Returns
    -------
    KChoice; its scores hold per k the BIC, the sizes and smallest share of that GMM's
    clusters, and the split-half stability (mean, s.d.; reported, not used)
    """
    from sklearn.mixture import GaussianMixture

    from cci_core.cluster.choose_k import elbow
    t0 = time.perf_counter()
    ks = sorted(set(int(k) for k in candidates))
    U = np.asarray(U, dtype=np.float64)
    if not ks or ks[0] < 2 or 4 * ks[-1] > len(U):
        raise ValueError(f"candidate ks {ks[0]}..{ks[-1]} need 2 <= k <= rows/4 = {len(U) // 4}"
                         if ks else "no candidate k given")
    rng = np.random.default_rng(seed)
    S = U[np.sort(rng.choice(len(U), sample, replace=False))] if len(U) > sample else U
    scores = []
    for k in ks:
        gmm = GaussianMixture(k, covariance_type="full", random_state=seed).fit(S)
        sizes = np.bincount(gmm.predict(S), minlength=k)
        mean, sd = split_half_stability(S, k, seed, repeats, sample) if repeats else (None, None)
        scores.append({"k": k, "bic": float(gmm.bic(S)), "min_share": float(sizes.min() * k / len(S)),
                       "sizes": sorted(sizes.tolist(), reverse=True), "stability": mean, "stability_sd": sd})
    bics = [s["bic"] for s in scores]
    least = ks[int(np.argmin(bics))]
    chosen = least if least < ks[-1] or len(ks) < 3 else elbow(ks, bics)
    return KChoice(chosen, RULE, ks, scores, time.perf_counter() - t0)
