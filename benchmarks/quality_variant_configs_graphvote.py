# ruff: noqa: F821  (run by quality_variants.py in its namespace: main is defined there)
# Issue 10, fourth round: the reference graph's vote (one-way 2-hop Jaccard², "ref2hop") with the
# self-trained head, and the head's covariance shrinkage. Run:
#   PYTHONPATH=src .venv-bench/bin/python benchmarks/quality_variants.py \
#       benchmarks/quality_variant_configs_graphvote.py
# The product's default since 2026-12-05 (tenth session) is the row "default: graph vote".


def graph_vote(share="0.75", k=10, **more):
    """The reference graph's vote mixed into the k-NN probabilities (cmh_part="ref": yx · xx^T)."""
    return dict(approx=(3, None), cmh_part="ref", cmh=(k, share), **more)


NEW = graph_vote(shrink=0.3, shrink2=0.1, jden=2)  # Jaccard s / (2k - s), squared
CFGS = {
    "previous default (self-training, no graph vote)": {},
    "LDA shrinkage Ledoit-Wolf": dict(shrink="lw"),
    "LDA shrinkage 0.3": dict(shrink=0.3),
    "LDA shrinkage 0.3, self-trained 0.1": dict(shrink=0.3, shrink2=0.1),
    "graph vote 0.75 (cellmapper's 4k normaliser), shrinkage 0.1": graph_vote(),
    "graph vote 0.75, shrinkage 0.2": graph_vote(shrink=0.2),
    "graph vote 0.75, Ledoit-Wolf": graph_vote(shrink="lw"),
    "graph vote 0.75 (4k), shrinkage 0.3 / self-trained 0.1": graph_vote(shrink=0.3, shrink2=0.1),
    "default: graph vote 0.75, Jaccard, shrinkage 0.3 / self-trained 0.1": NEW,
    "the same, share 0.6": dict(NEW, cmh=(10, "0.6")),
    "the same, share 0.9": dict(NEW, cmh=(10, "0.9")),
    "the same, k 8": dict(NEW, cmh=(8, "0.75")),
    "the same, k 9": dict(NEW, cmh=(9, "0.75")),
    "the same, forward 2-hop (yx · xx)": dict(NEW, fwd=True),
    "the same, shared count (no Jaccard, linear)": dict(NEW, jpow="linear"),
    "the same, Jaccard^1": dict(NEW, jpow=1),
    "the same, Jaccard^3": dict(NEW, jpow=3),
}
main(CFGS)
main(CFGS, only=["pbmc", "xplat-slideseq", "xplat-visium"], splits=40, seeds=20)
