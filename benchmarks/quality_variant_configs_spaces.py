# ruff: noqa: F821  (run by quality_variants.py in its namespace: main is defined there)
# Issue 10, second round: the joint space itself, and the query's class priors. Run:
#   PYTHONPATH=src .venv-bench/bin/python benchmarks/quality_variants.py \
#       benchmarks/quality_variant_configs_spaces.py
REF2HOP = dict(approx=(3, None), cmh_part="ref", cmh=(10, "0.75"))
CFGS = {
    "default": {},
    "PCA fitted on the reference only, query projected": dict(emb="refpca"),
    "PCA fitted on the query only": dict(emb="qpca"),
    "PCA with both datasets weighted equally": dict(emb="balanced"),
    "no per-dataset centring (cellmapper's joint PCA, L2 kept)": dict(emb="nocentre"),
    "no per-dataset centring, no L2 (cellmapper's joint PCA)": dict(emb="nocentre+raw", norm=(0, 0)),
    "no L2 scaling (k-NN and head)": dict(emb="raw", norm=(0, 0)),
    "k-NN without L2, head with": dict(emb="raw", norm=(0, 1)),
    "k-NN with L2, head without": dict(emb="raw", norm=(1, 0)),
    "rows / |x|^0.5 (both)": dict(emb="raw", norm=(0.5, 0.5)),
    "k-NN without L2, head with, + ref2hop": dict(REF2HOP, emb="raw", norm=(0, 1)),
    "no L2, + ref2hop": dict(REF2HOP, emb="raw", norm=(0, 0)),
    "label shift by EM (to convergence)": dict(em=(50, 1.0)),
    "label shift by EM, damped (ratio^0.5)": dict(em=(50, 0.5)),
    "label shift by EM, 3 steps": dict(em=(3, 1.0)),
    # the first round's candidate (ref2hop + bilateral smoothing over an approximate query graph)
    "candidate + k-NN without L2, head with": dict(
        REF2HOP, smooth=(10, 0.5, "bilateral"), emb="raw", norm=(0, 1)
    ),
    "candidate + no L2": dict(REF2HOP, smooth=(10, 0.5, "bilateral"), emb="raw", norm=(0, 0)),
}
main(CFGS)
