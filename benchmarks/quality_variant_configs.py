# ruff: noqa: F821  (run by quality_variants.py in its namespace: main is defined there)
# Issue 10 variants; run:
#   PYTHONPATH=src .venv-bench/bin/python benchmarks/quality_variants.py benchmarks/quality_variant_configs.py
# approximate query graph; 2-hop through the reference graph
A = dict(approx=(3, None), cmh_part="ref")
CANDIDATE = dict(A, cmh=(10, "0.75"), smooth=(10, 0.5, "bilateral"))
CFGS = {
    "default": {},
    "query smoothing 0.5·p + 0.5·A_qq p (k_q 10, exact graph)": dict(smooth=(10, 0.5, "pool")),
    "bilateral query smoothing (k_q 10, 0.5, approx graph)": dict(
        approx=(3, None), smooth=(10, 0.5, "bilateral")
    ),
    "ref2hop Jaccard² k10, mixed 0.75 with gauss k30": dict(A, cmh=(10, "0.75")),
    "LDA Ledoit-Wolf shrinkage": dict(shrink="lw"),
    "ref2hop 0.75 + LW": dict(A, cmh=(10, "0.75"), shrink="lw"),
    "CANDIDATE: ref2hop 0.75 + bilateral (k_q 10, 0.5)": CANDIDATE,
    "CANDIDATE + LW": dict(CANDIDATE, shrink="lw"),
    "cellmapper bidirectional Jaccard² k10, pooled": dict(cmh=(10, "replace")),
}
main(CFGS)
main(CFGS, only=["pbmc", "xplat-slideseq", "xplat-visium"], splits=40, seeds=20)
