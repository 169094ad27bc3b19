"""Experiment harness of issue 10 (not part of the product): label-pipeline variants in seconds.

It re-implements the default's label path on the quality panel's cases (joint embedding, exact
k-NN, gauss kernel, shrunk-LDA head, log-linear pool; the argmax is what calibration leaves
unchanged) and adds the variants measured for issue 10: query self-graph smoothing (exact or an
approximate graph from shared reference neighbours), cellmapper's Jaccard² kernels, one-way
2-hop Jaccard² through the reference graph ("ref2hop"), query-adapted LDA means, Ledoit-Wolf
shrinkage, gene weighting; joint spaces fitted differently, without per-dataset centring or
without the L2 scaling (``norm``: k-NN and head each in their own), and a label-shift correction
of the class priors by EM (``em``); third round: CORAL alignment of the query's covariance
(``align``), k-NN votes divided by the reference's class frequencies (``prior``), and the head's
self-training (``selftrain``: threshold, share of the chosen query cells, rounds; on by default as
in the product, ``None`` turns it off); fourth round: the self-trained head's own shrinkage
(``shrink2``), the Jaccard normaliser of the 2-hop vote (``jden``: 4k as cellmapper, 2k the
Jaccard index), its direction (``fwd``) and power (``jpow``). Its ``default`` row is the default
before the fourth round; ``NEW`` in ``quality_variant_configs_graphvote.py`` reproduces
``quality.py``'s current default (the graph vote) to the digit. Rounds one and two were measured
with the default of their time: joint rows at unit length and no self-training, i.e.
``unit_joint=True, selftrain=None`` added to their configs.

    PYTHONPATH=src .venv-bench/bin/python benchmarks/quality_variants.py CONFIGS.py

``CONFIGS.py`` is Python run in this module's namespace, e.g.
``main({"default": {}, "ref2hop": dict(cmh=(10, "0.75"), cmh_part="ref", shrink="lw")})``;
``main(..., only=["pbmc"], splits=40, seeds=20)`` for wider draws. See ``run_case`` for the keys.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import faiss
import numpy as np
from scipy import sparse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import quality as Q  # noqa: E402

from napari_cellmapper.core import joint_embedding as JE  # noqa: E402
from napari_cellmapper.core import label_head as LH  # noqa: E402

warnings.simplefilter("ignore")
faiss.omp_set_num_threads(1)

# ----------------------------------------------------------------- embedding hooks
_orig_scale = JE._scale
STATE: dict = {"gene_w": None, "ref_codes": None, "mode": "default"}


def _scale_hook(x, usable, scaling):
    mode = STATE["mode"]
    if mode == "default":
        return _orig_scale(x, usable, scaling)
    centred = x - x[usable].mean(axis=0)
    if mode.startswith("soft"):  # partial z-score: sd^alpha
        alpha = float(mode[4:])
        sd = x[usable].std(axis=0)
        f = np.where(sd > 0, sd, 1.0) ** alpha
        z = centred / f
        total = float(z[usable].std())
        z = z / total if total > 0 else z
    elif mode.startswith("fw"):  # F-statistic weights, computed on the reference only
        z = centred
        total = float(z[usable].std())
        z = z / total if total > 0 else z
        STATE.setdefault("pending", []).append(z)
    else:
        raise ValueError(mode)
    z[~usable] = 0
    return z.astype(np.float32)


JE._scale = _scale_hook


def _pca_fitted_on(which: str):
    """``JE._pca`` fitted on the reference only, the query only, or both datasets weighted equally."""

    def pca(zq, zr, n_comps, seed):
        from sklearn.decomposition import PCA

        fit = {
            "refpca": lambda: zr,
            "qpca": lambda: zq,
            "balanced": lambda: np.vstack([zr / np.sqrt(zr.shape[0]), zq / np.sqrt(zq.shape[0])]),
        }[which]()
        model = PCA(n_components=n_comps, random_state=seed).fit(fit)
        return model.transform(zq).astype(np.float32), model.transform(zr).astype(np.float32), {}

    return pca


def _embed_space(case, mode, **kw):
    """Joint-space variants: PCA fitted differently, no per-dataset centring, no L2 scaling."""
    parts = mode.split("+")
    orig_pca, orig_l2 = JE._pca, JE.l2_normalise
    if parts[0] in ("refpca", "qpca", "balanced"):
        JE._pca = _pca_fitted_on(parts[0])
    if parts[0] == "nocentre":

        def keep(x, usable, scaling):
            z = x.astype(np.float32).copy()
            z[~usable] = 0
            return z

        JE._scale = keep
    if "raw" in parts:  # coordinates before the L2 scaling (run_case applies cfg["norm"])
        JE.l2_normalise = lambda a: a
    try:
        return JE.build_joint_embedding(case.query, case.reference, **kw)
    finally:
        JE._pca, JE.l2_normalise, JE._scale = orig_pca, orig_l2, _scale_hook


def embed(case, mode="default", **kw):
    if mode.split("+")[0] in ("refpca", "qpca", "balanced", "nocentre", "raw"):
        return _embed_space(case, mode, **kw)
    STATE["mode"] = mode
    STATE["pending"] = []
    if mode.startswith("fw"):
        # weight genes by between/within class variance on the reference (after dataset scaling)
        power = float(mode[2:])
        orig_pca = JE._pca

        def pca_w(zq, zr, n_comps, seed):
            codes = STATE["ref_codes_usable"]
            ok = codes >= 0
            zr_ok = zr[ok]
            c = codes[ok]
            n_c = c.max() + 1
            means = np.zeros((n_c, zr.shape[1]))
            np.add.at(means, c, zr_ok)
            cnt = np.bincount(c, minlength=n_c)
            means /= np.maximum(cnt, 1)[:, None]
            within = ((zr_ok - means[c]) ** 2).mean(axis=0)
            between = (means**2).mean(axis=0) - means.mean(axis=0) ** 2  # equal class weights
            f = between / np.maximum(within, 1e-12)
            w = (f / f.mean()) ** power
            return orig_pca(zq * w, zr * w, n_comps, seed)

        # codes of the reference usable rows are set by the caller
        JE._pca = pca_w
        try:
            emb = JE.build_joint_embedding(case.query, case.reference, **kw)
        finally:
            JE._pca = orig_pca
    else:
        emb = JE.build_joint_embedding(case.query, case.reference, **kw)
    STATE["mode"] = "default"
    return emb


# ----------------------------------------------------------------- pipeline pieces
def knn(xr, xq, k):
    if xr is xq and xq is STATE.get("xq_obj") and STATE.get("approx"):
        m, budget = STATE["approx"]
        d, i = approx_qq(xq, STATE["idx"], k - 1, m, budget)
        return d, i
    index = faiss.IndexFlatL2(xr.shape[1])
    index.add(np.ascontiguousarray(xr, np.float32))
    d2, idx = index.search(np.ascontiguousarray(xq, np.float32), k)
    return np.sqrt(np.maximum(d2, 0)), idx


def gauss_proba(d, idx, codes, n_c, sigma=None, bw=1.0):
    sigma = (float(d.mean()) if sigma is None else sigma) * bw
    d2 = d**2
    w = np.exp(-(d2 - d2.min(axis=1, keepdims=True)) / (2 * sigma**2))
    w /= w.sum(axis=1, keepdims=True)
    STATE["M"] = sparse.csr_matrix(
        (w.ravel(), idx.ravel(), np.arange(0, w.size + 1, w.shape[1])), shape=(d.shape[0], codes.size)
    )
    p = np.zeros((d.shape[0], n_c))
    np.add.at(p, (np.repeat(np.arange(d.shape[0]), d.shape[1]), codes[idx].ravel()), w.ravel())
    return p


def run_case(case, emb_cache, cfg):
    """Predicted labels (strings) for one case under the config ``cfg``."""
    key = (cfg.get("emb", "default"), cfg.get("n_comps", 50))
    labels_all = case.reference.obs[Q.KEY].astype(str).to_numpy()
    cats, codes_all = np.unique(labels_all, return_inverse=True)
    if key not in emb_cache:
        if case.use_rep is not None:
            emb_cache[key] = (
                case.reference.obsm[case.use_rep],
                case.query.obsm[case.use_rep],
                np.ones(case.reference.n_obs, bool),
                np.ones(case.query.n_obs, bool),
            )
        else:
            # reference usable rows are needed by the fw hook: build once with default to learn them
            base = (
                JE.build_joint_embedding(case.query, case.reference, n_comps=key[1])
                if key[0].startswith("fw")
                else None
            )
            if base is not None:
                STATE["ref_codes_usable"] = np.where(base.reference_usable, codes_all, -1)
            emb = embed(case, key[0], n_comps=key[1])
            emb_cache[key] = (emb.reference, emb.query, emb.reference_usable, emb.query_usable)
    xr_all, xq, r_ok, q_ok = emb_cache[key]
    xr = xr_all[r_ok]
    codes = codes_all[r_ok]
    if cfg.get("align") and case.use_rep is None:  # second-order alignment of the query (CORAL)
        xq = align_query(np.asarray(xq, np.float64), np.asarray(xr, np.float64), q_ok, *cfg["align"])
    if cfg.get("cosine") or (cfg.get("unit_joint") and case.use_rep is None):  # rows at unit length
        xr, xq = JE.l2_normalise(np.asarray(xr, np.float32)), JE.l2_normalise(np.asarray(xq, np.float32))
    xr_head, xq_head = xr, xq
    if cfg.get("norm") and case.use_rep is None:  # rows divided by |x|^alpha: k-NN space, head space
        a_knn, a_head = cfg["norm"]
        xr_head, xq_head = _norm_power(xr, a_head), _norm_power(xq, a_head)
        xr, xq = _norm_power(xr, a_knn), _norm_power(xq, a_knn)
    n_c = len(cats)
    k = cfg.get("k", 30)
    d, idx = knn(xr, xq, k)
    STATE["idx"] = idx
    STATE["d30"] = d
    STATE["xq_obj"] = xq
    STATE["rev"] = cfg.get("rev")
    STATE["approx"] = cfg.get("approx")
    p_knn = gauss_proba(d, idx, codes, n_c, bw=cfg.get("bw", 1.0))
    if cfg.get("kern") == "equal":
        p_knn = gauss_proba(d, idx, codes, n_c, bw=1e6)
    elif cfg.get("kern") == "adaptive":
        sig = d.mean(1, keepdims=True) * cfg.get("bw", 1.0)
        ww = np.exp(-(d**2 - (d**2).min(1, keepdims=True)) / (2 * sig**2))
        ww /= ww.sum(1, keepdims=True)
        p_knn = np.zeros((d.shape[0], n_c))
        np.add.at(p_knn, (np.repeat(np.arange(d.shape[0]), k), codes[idx].ravel()), ww.ravel())
    if cfg.get("q2"):  # query-graph 2-hop jaccard^2: s_ij = #{q in N_q(i) + i : j in N_r(q)}
        kq, kr, mode, pw = cfg["q2"]
        nq, nr = xq.shape[0], xr.shape[0]
        yy = _adj(knn(xq, xq, kq + 1)[1], nq)  # includes self
        yx = _adj(idx[:, :kr], nr)
        S = (yy @ yx).tocsr()
        S.data = S.data ** float(pw)
        onehot = np.zeros((nr, n_c))
        onehot[np.arange(nr), codes] = 1
        p_g = np.asarray(S @ onehot)
        p_g /= np.maximum(p_g.sum(1, keepdims=True), 1e-12)
        beta = 1.0 if mode == "replace" else (0.5 if mode == "avg" else float(mode))
        p_knn = (1 - beta) * p_knn + beta * p_g
    if cfg.get("cmh"):
        kh, mode = cfg["cmh"]
        STATE["cmh_part"] = cfg.get("cmh_part", "both")
        STATE["jden"] = cfg.get("jden", 4)
        STATE["fwd"] = cfg.get("fwd", False)
        STATE["jpow"] = cfg.get("jpow", 2)
        p_g = cm_hnoca(xr, xq, codes, n_c, kh)
        beta = 1.0 if mode == "replace" else (0.5 if mode == "avg" else float(mode))
        p_knn = (1 - beta) * p_knn + beta * p_g
    head = cfg.get("head", "lda")
    w = cfg.get("w", 0.25)
    xr_h, xq_h = xr_head, xq_head
    if cfg.get("head_comps") and case.use_rep is None:
        hk = ("default", cfg["head_comps"])
        if hk not in emb_cache:
            emb = embed(case, "default", n_comps=hk[1])
            emb_cache[hk] = (emb.reference, emb.query, emb.reference_usable, emb.query_usable)
        xr_h, xq_h = emb_cache[hk][0][r_ok], emb_cache[hk][1]
    if head == "lda":
        shr = cfg.get("shrink", 0.1)
        if shr == "lw":
            from sklearn.covariance import ledoit_wolf_shrinkage

            xs = np.asarray(xr_h, np.float64)
            mu = np.zeros((n_c, xs.shape[1]))
            np.add.at(mu, codes, xs)
            mu /= np.maximum(np.bincount(codes, minlength=n_c), 1)[:, None]
            shr = float(ledoit_wolf_shrinkage(xs - mu[codes], assume_centered=True))
            STATE.setdefault("lw", []).append(round(shr, 3))
        model = LH.fit_lda(xr_h, codes, n_c, shrinkage=shr)
        xq_in = xq_h
        if cfg.get("hsmooth"):
            kq, a = cfg["hsmooth"]
            d_, i_ = knn(xq_h, xq_h, kq + 1)
            xq_in = (1 - a) * xq_h + a * xq_h[i_[:, 1:]].mean(axis=1)
            if cfg.get("hs_l2", True):
                xq_in = JE.l2_normalise(xq_in.astype(np.float32))
        p_head = model.probabilities(xq_in)
    elif head == "adapt":
        lam, iters, cov_q = cfg.get("adapt", (0.5, 1, False))
        model = LH.fit_lda(xr, codes, n_c, shrinkage=cfg.get("shrink", 0.1))
        p_head = model.probabilities(xq)
        for _ in range(iters):
            p_cur = LH.pool(p_knn, p_head, w)
            model = adapt_lda(xr, codes, n_c, xq, p_cur, lam, cfg.get("shrink", 0.1), cov_q)
            p_head = model.probabilities(xq)
    elif head == "logreg":
        from sklearn.linear_model import LogisticRegression

        m = LogisticRegression(max_iter=2000, C=cfg.get("C", 1.0), class_weight="balanced").fit(xr, codes)
        p_head = np.zeros((xq.shape[0], n_c))
        p_head[:, m.classes_] = m.predict_proba(xq)
    else:
        p_head = p_knn
        w = 0.0
    if cfg.get("typ") and head == "lda":
        gamma, mode = cfg["typ"]
        pr = model.probabilities(xr_h)
        own = pr[np.arange(codes.size), codes]
        M = STATE["M"]
        onehot = np.zeros((codes.size, n_c))
        onehot[np.arange(codes.size), codes] = 1
        if mode == "weight":
            Y = onehot * (own**gamma)[:, None]
        else:  # soft labels
            Y = (1 - gamma) * onehot + gamma * pr
        p_knn = np.asarray(M @ Y)
        p_knn /= np.maximum(p_knn.sum(1, keepdims=True), 1e-12)
    if cfg.get("prior") is not None:  # k-NN votes divided by the reference's class frequency^beta
        freq = np.bincount(codes, minlength=n_c) / codes.size
        p_knn = p_knn / np.maximum(freq, 1e-12) ** cfg["prior"]
        p_knn /= np.maximum(p_knn.sum(1, keepdims=True), 1e-12)
    selftrain = cfg.get("selftrain", (0.9, 1.0, 1))  # the default's self-training; None: off
    if selftrain and head == "lda":  # LDA refitted with confident query pseudo-labels
        thr, wq, iters = selftrain
        for _ in range(iters):
            p_cur = LH.pool(p_knn, p_head, w)
            conf = p_cur.max(1)
            sel = (conf >= thr) & (p_cur.sum(1) > 0)
            xs = np.vstack([xr_h, xq_h[sel]])
            cs = np.concatenate([codes, p_cur[sel].argmax(1)])
            if wq != 1.0:  # weight the query rows by repeating/subsampling
                rng = np.random.default_rng(0)
                m = int(round(sel.sum() * wq))
                pick = rng.choice(np.flatnonzero(sel), m, replace=wq > 1)
                xs = np.vstack([xr_h, xq_h[pick]])
                cs = np.concatenate([codes, p_cur[pick].argmax(1)])
            model = LH.fit_lda(xs, cs, n_c, shrinkage=cfg.get("shrink2", shr))  # default: the first fit's
            p_head = model.probabilities(xq_h)
    STATE["p_knn_raw"] = p_knn
    sm = cfg.get("smooth")  # (k_q, alpha, where)
    if sm and sm[2] == "knn":
        p_knn = smooth(xq, p_knn, sm[0], sm[1])
    p = LH.pool(p_knn, p_head, w)
    if sm and sm[2] == "pool":
        p = smooth(xq, p, sm[0], sm[1])
    if sm and sm[2] == "adaptive":  # alpha scaled by (1 - own max probability)
        a = sm[1] * (1 - p.max(axis=1, keepdims=True)) * 2
        a = np.minimum(a, 1)
        d_, i_ = knn(xq, xq, sm[0] + 1)
        p = (1 - a) * p + a * p[i_[:, 1:]].mean(axis=1)
    if sm and sm[2] == "gauss":
        d_, i_ = knn(xq, xq, sm[0] + 1)
        d_, i_ = d_[:, 1:], i_[:, 1:]
        sg = d_.mean()
        ww = np.exp(-(d_**2 - (d_**2).min(1, keepdims=True)) / (2 * sg**2))
        ww /= ww.sum(1, keepdims=True)
        p = (1 - sm[1]) * p + sm[1] * np.einsum("nk,nkc->nc", ww, p[i_])
    if sm and sm[2] == "mutual":
        d_, i_ = knn(xq, xq, sm[0] + 1)
        nb = i_[:, 1:]
        A = _adj(nb, xq.shape[0])
        A = A.multiply(A.T).tocsr()  # mutual edges
        deg = np.asarray(A.sum(1)).ravel()
        avg = np.asarray(A @ p) / np.maximum(deg, 1)[:, None]
        a = sm[1] * (deg > 0)[:, None]
        p = (1 - a) * p + a * avg
    if sm and sm[2] == "bilateral":
        d_, i_ = knn(xq, xq, sm[0] + 1)
        nb = i_[:, 1:]
        sim = np.einsum("nc,nkc->nk", p, p[nb])  # agreement of the two cells' distributions
        ww = sim / np.maximum(sim.sum(1, keepdims=True), 1e-12)
        p = (1 - sm[1]) * p + sm[1] * np.einsum("nk,nkc->nc", ww, p[nb])
    if sm and sm[2] in ("joint", "jointpool"):  # query neighbours vote beside reference ones
        kq, iters = sm[0], int(sm[1])
        dq_, iq_ = knn(xq, xq, kq + 1)
        dq_, iq_ = dq_[:, 1:], iq_[:, 1:]
        dr_ = STATE["d30"]
        sig = float(dr_.mean()) * cfg.get("jbw", 1.0)
        dmin = np.minimum(dr_.min(1, keepdims=True), dq_.min(1, keepdims=True))
        wr = np.exp(-(dr_**2 - dmin**2) / (2 * sig**2))
        wq = np.exp(-(dq_**2 - dmin**2) / (2 * sig**2)) * cfg.get("qscale", 1.0)
        tot = wr.sum(1, keepdims=True) + wq.sum(1, keepdims=True)
        base = STATE["p_knn_raw"] * (wr.sum(1, keepdims=True) / tot)  # reference part
        wqn = wq / tot
        cur = p if sm[2] == "jointpool" else STATE["p_knn_raw"]
        for _ in range(iters):
            nxt = base + np.einsum("nk,nkc->nc", wqn, cur[iq_])
            if sm[2] == "jointpool":
                nxt = LH.pool(nxt, p_head, w)
            cur = nxt
        p = cur if sm[2] == "jointpool" else LH.pool(cur, p_head, w)
    if sm and sm[2] == "logpool":
        p = smooth_log(xq, p, sm[0], sm[1])
    bip = cfg.get("bip")
    if bip:
        M = STATE["M"]
        for _ in range(bip[1]):
            col = np.asarray(M.sum(0)).ravel()
            p_ref = (M.T @ p) / np.maximum(col, 1e-12)[:, None]
            p = (1 - bip[0]) * p + bip[0] * (M @ p_ref)
    if cfg.get("em"):  # label-shift correction (Saerens et al. 2002): the query's class priors by EM
        p = em_priors(p, np.bincount(codes, minlength=n_c) / codes.size, *cfg["em"])
    pred = cats[p.argmax(axis=1)].astype(object)
    pred[~q_ok] = "unmapped"
    return pred.astype(str)


def _sqrtm(c, inverse=False):
    w, v = np.linalg.eigh(c)
    w = np.maximum(w, 1e-12) ** (-0.5 if inverse else 0.5)
    return (v * w) @ v.T


def align_query(xq, xr, q_ok, mode, eps, strength=1.0):
    """CORAL (Sun et al. 2016): the query's covariance mapped onto the reference's.

    ``mode``: "full" (xq Cq^-1/2 Cr^1/2), "diag" (per-component standard deviations);
    ``eps``: shrinkage towards the mean variance; ``strength``: 0 none .. 1 full (interpolated in
    the matrix power of the transform)."""
    ok = xq[q_ok]
    mq, mr = ok.mean(0), xr.mean(0)
    cq, cr = np.cov(ok, rowvar=False), np.cov(xr, rowvar=False)
    d = cq.shape[0]
    cq = (1 - eps) * cq + eps * np.trace(cq) / d * np.eye(d)
    cr = (1 - eps) * cr + eps * np.trace(cr) / d * np.eye(d)
    if mode == "diag":
        f = (np.sqrt(np.diag(cr)) / np.sqrt(np.diag(cq))) ** strength
        out = (xq - mq) * f + mr
    else:
        t = _sqrtm(cq, inverse=True) @ _sqrtm(cr)
        if strength != 1.0:
            w, v = np.linalg.eig(t)
            t = np.real((v * (w.astype(complex) ** strength)) @ np.linalg.inv(v))
        out = (xq - mq) @ t + mr
    out[~q_ok] = 0
    return out.astype(np.float32)


def _norm_power(x, alpha):
    x = np.asarray(x, np.float32)
    if alpha == 0:
        return x
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12) ** alpha


def em_priors(p, source, iters, gamma):
    """Posteriors re-weighted by (query prior / reference prior)^gamma, the query prior found by EM."""
    mapped = p.sum(axis=1) > 0
    prior, out = source.copy(), p
    for _ in range(iters):
        ratio = np.divide(prior, source, out=np.zeros_like(prior), where=source > 0) ** gamma
        out = p * ratio
        out /= np.maximum(out.sum(axis=1, keepdims=True), 1e-300)
        new = out[mapped].mean(axis=0)
        done = np.abs(new - prior).max() < 1e-6
        prior = new
        if done:
            break
    return out


def adapt_lda(xr, codes, n_c, xq, pq, lam, shrinkage, cov_q):
    """LDA with class means moved towards the query's soft class means (weights pq)."""
    means, present, cov = LH.class_statistics(xr, codes, n_c)
    xq = np.asarray(xq, np.float64)
    mass = pq.sum(0)
    qmeans = (pq.T @ xq) / np.maximum(mass, 1e-12)[:, None]
    # trust the query's mean of a class in proportion to its mass (lam = weight at large mass)
    t = lam * (mass / (mass + 10.0))
    new = (1 - t[:, None]) * means + t[:, None] * qmeans
    if cov_q:
        cq = np.einsum("nc,nd,ne->de", pq, xq, xq) / pq.sum() - np.einsum(
            "c,cd,ce->de", mass / pq.sum(), qmeans, qmeans
        )
        cov = 0.5 * cov + 0.5 * cq
    ridge = float(np.trace(cov)) / cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * ridge * np.eye(cov.shape[0])
    solved = np.linalg.solve(cov, new.T)
    intercept = -0.5 * np.einsum("cd,dc->c", new, solved)
    intercept[~present] = -np.inf
    return LH.LinearHead(solved.astype(np.float32), intercept.astype(np.float32))


def _adj(idx, n_cols):
    n, k = idx.shape
    return sparse.csr_matrix((np.ones(n * k), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n_cols))


def _query_side(xr, xq, k):
    """cellmapper's query self-graph ``yy`` and reference -> query graph ``xy`` (see cm_hnoca)."""
    nr, nq = xr.shape[0], xq.shape[0]
    yy = _adj(knn(xq, xq, k)[1], nq)
    if STATE.get("rev"):
        # reverse of the query->reference graph (k = 30 there): each reference cell's k nearest
        # query cells among those that have it as a neighbour
        d30, i30 = STATE["d30"], STATE["idx"]
        rows = np.repeat(np.arange(nq), i30.shape[1])
        cols = i30.ravel()
        dist = d30.ravel()
        order = np.lexsort((dist, cols))
        cols_s, rows_s = cols[order], rows[order]
        start = np.searchsorted(cols_s, np.arange(nr))
        rank = np.arange(cols_s.size) - start[cols_s]
        keep = rank < k
        xy = sparse.csr_matrix((np.ones(keep.sum()), (cols_s[keep], rows_s[keep])), shape=(nr, nq))
    else:
        xy = _adj(knn(xq, xr, k)[1], nq)
    return yy, xy


def cm_hnoca(xr, xq, codes, n_c, k):
    """cellmapper 0.2.6's hnoca kernel (yx xx^T + yy xy^T, jaccard squared), self edges included."""
    nr = xr.shape[0]
    yx = _adj(knn(xr, xq, k)[1], nr)
    xx = _adj(knn(xr, xr, k)[1], nr)
    part = STATE.get("cmh_part", "both")
    if part == "ref":  # the query's own graph is not needed
        kern = (yx @ (xx if STATE.get("fwd") else xx.T)).tocsr()
    else:
        yy, xy = _query_side(xr, xq, k)
        kern = ((yy @ xy.T) if part == "query" else (yx @ xx.T + yy @ xy.T)).tocsr()
    if STATE.get("jpow") != "linear":  # "linear": the shared count itself
        kern.data = (kern.data / (STATE.get("jden", 4) * k - kern.data)) ** STATE.get("jpow", 2)
    tot = np.asarray(kern.sum(1)).ravel()
    onehot = np.zeros((nr, n_c))
    onehot[np.arange(nr), codes] = 1
    p = np.asarray(kern @ onehot)
    return p / np.maximum(tot, 1e-12)[:, None]


def approx_qq(xq, idx, kq, m=1, budget=None):
    """Query self-graph from candidates: query cells whose first ``m`` reference neighbours
    include one of my reference neighbours; self first, then the kq nearest candidates."""
    nq, k = idx.shape
    from collections import defaultdict

    inv = defaultdict(list)
    for q in range(nq):
        for j in idx[q, :m]:
            inv[j].append(q)
    out_i = np.zeros((nq, kq + 1), np.int64)
    out_d = np.full((nq, kq + 1), np.inf)
    for q in range(nq):
        cand = set()
        for j in idx[q, : (budget or k)]:
            cand.update(inv.get(j, ()))
        cand.discard(q)
        cand = np.fromiter(cand, np.int64)
        out_i[q, :] = q
        out_d[q, 0] = 0
        if cand.size:
            dd = ((xq[cand] - xq[q]) ** 2).sum(1)
            o = np.argsort(dd)[:kq]
            out_i[q, 1 : 1 + o.size] = cand[o]
            out_d[q, 1 : 1 + o.size] = np.sqrt(dd[o])
    return out_d, out_i


def smooth(xq, p, kq, alpha):
    d, idx = knn(xq, xq, kq + 1)
    nb = idx[:, 1:]
    return (1 - alpha) * p + alpha * p[nb].mean(axis=1)


def smooth_log(xq, p, kq, alpha):
    d, idx = knn(xq, xq, kq + 1)
    nb = idx[:, 1:]
    lp = np.log(p + 1e-3)
    v = (1 - alpha) * lp + alpha * lp[nb].mean(axis=1)
    return np.exp(v - v.max(axis=1, keepdims=True))


def main(configs: dict[str, dict], only=None, splits=10, seeds=5):
    cases = Q.panel(Q.DEFAULT_DATA, splits, seeds)
    if only:
        cases = {k: v for k, v in cases.items() if k in only}
    caches = {name: [dict() for _ in runs] for name, runs in cases.items()}
    print("| variant | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    for label, cfg in configs.items():
        t0 = time.perf_counter()
        cells = []
        for name, runs in cases.items():
            acc, f1 = [], []
            for case, cache in zip(runs, caches[name], strict=True):
                s = Q.scores(case, run_case(case, cache, cfg), None)
                acc.append(s["acc"])
                f1.append(s["f1"])
            if len(acc) > 1:
                cells.append(f"{np.mean(acc):.3f}±{np.std(acc):.3f} / {np.mean(f1):.3f}")
            else:
                cells.append(f"{acc[0]:.3f} / {f1[0]:.3f}")
        print(f"| {label} | " + " | ".join(cells) + f" | {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    exec(open(sys.argv[1]).read())
