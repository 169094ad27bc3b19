# ruff: noqa: F821  (run by quality_variants.py in its namespace: main is defined there)
# Issue 10, third round: aligning the query, class priors, and the head's self-training. Run:
#   PYTHONPATH=src .venv-bench/bin/python benchmarks/quality_variants.py \
#       benchmarks/quality_variant_configs_selftrain.py
OLD = dict(unit_joint=True, selftrain=None)  # the default until 2026-12-05
UNIT = dict(emb="raw", norm=(1, 1))  # the joint rows at unit length, then the variant


def ref2hop(mix="0.75"):
    return dict(approx=(3, None), cmh_part="ref", cmh=(10, mix))


CFGS = {
    "previous default (unit-length rows, no self-training)": OLD,
    "CORAL (query covariance onto the reference's), shrinkage 0.1": dict(
        UNIT, selftrain=None, align=("full", 0.1)
    ),
    "CORAL, shrinkage 0.5": dict(UNIT, selftrain=None, align=("full", 0.5)),
    "CORAL, per component only": dict(UNIT, selftrain=None, align=("diag", 0.0)),
    "k-NN votes / class frequency^0.5": dict(OLD, prior=0.5),
    "k-NN votes / class frequency": dict(OLD, prior=1.0),
    "self-training 0.9, unit-length rows": dict(UNIT, selftrain=(0.9, 1.0, 1)),
    "self-training 0.8, two rounds, unit-length rows": dict(UNIT, selftrain=(0.8, 1.0, 2)),
    "unscaled rows, no self-training": dict(selftrain=None),
    "default: self-training 0.9, unscaled rows": {},
    "self-training 0.95": dict(selftrain=(0.95, 1.0, 1)),
    "self-training 0.8": dict(selftrain=(0.8, 1.0, 1)),
    "self-training 0.9, two rounds": dict(selftrain=(0.9, 1.0, 2)),
    "self-training, rows / |x|^0.5": dict(emb="raw", norm=(0.5, 0.5)),
    "self-training, k-NN unscaled, head on unit-length rows": dict(emb="raw", norm=(0, 1)),
    "self-training + ref2hop": ref2hop(),
    "self-training 0.85 + ref2hop": dict(ref2hop(), selftrain=(0.85, 1.0, 1)),
    "self-training 0.85 + ref2hop 0.85": dict(ref2hop("0.85"), selftrain=(0.85, 1.0, 1)),
}
main(CFGS)
WIDE = [
    "previous default (unit-length rows, no self-training)",
    "default: self-training 0.9, unscaled rows",
    "self-training, rows / |x|^0.5",
    "self-training, k-NN unscaled, head on unit-length rows",
    "self-training + ref2hop",
    "self-training 0.85 + ref2hop",
]
main({k: CFGS[k] for k in WIDE}, only=["pbmc", "xplat-slideseq", "xplat-visium"], splits=40, seeds=20)
