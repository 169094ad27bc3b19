"""Kill exports at random moments; check that nothing is lost, half-written or left behind.

Each round starts one ``napari-cellmapper map`` export (``--stream`` to a new path, ``--stream
--overwrite``, a new SpatialData path, ``--overwrite`` of one, ``--in-place``, an ``.h5ad``
``--overwrite``) and sends SIGKILL after a random delay. After each kill: the sources are
byte-identical, the destination is absent, unchanged or complete (readable, every cell), and once
a later run of the same kind has finished no staging is left.

    PYTHONPATH=src python tools/kill_loop.py --rounds 40 --max-delay 6
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

STAGING_MARK = ".cellmapper-tmp-"


def digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def setup(folder: Path) -> dict[str, Path]:
    import anndata as ad

    from napari_cellmapper import datasets

    reference, query = datasets.pbmc_example()
    paths = {"ref": folder / "ref.h5ad", "query": folder / "query.zarr", "spatial": folder / "spatial.zarr"}
    reference.write_h5ad(paths["ref"])
    ad.AnnData(obs=query.obs[[]], obsm={"X_joint": query.obsm["X_joint"]}).write_zarr(paths["query"])
    datasets.write_spatial_example(paths["spatial"])
    return paths


def commands(paths: dict[str, Path], folder: Path) -> dict[str, tuple[list[str], Path]]:
    base = [
        "map",
        "--reference",
        str(paths["ref"]),
        "--use-rep",
        "X_joint",
        "--obs",
        "cell_type",
        "-k",
        "10",
        "-q",
    ]
    stream = [*base, "--query", str(paths["query"]), "--stream", "--chunk-size", "50"]
    spatial = [*base, "--query", str(paths["spatial"]), "--table", "table", "--layer", "X"]
    return {
        "stream-new": ([*stream, "--out", str(folder / "s_new.zarr")], folder / "s_new.zarr"),
        "stream-overwrite": (
            [*stream, "--overwrite", "--out", str(folder / "s_old.zarr")],
            folder / "s_old.zarr",
        ),
        "new-path": ([*spatial, "--out", str(folder / "x_new.zarr")], folder / "x_new.zarr"),
        "overwrite": ([*spatial, "--overwrite", "--out", str(folder / "x_old.zarr")], folder / "x_old.zarr"),
        "in-place": (
            [*spatial, "--in-place"],
            paths["spatial"],
        ),
        "h5ad-overwrite": (
            [*base, "--query", str(folder / "q.h5ad"), "--overwrite", "--out", str(folder / "h_old.h5ad")],
            folder / "h_old.h5ad",
        ),  # fmt: skip
    }


def run(args: list[str], delay: float | None) -> int:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "napari_cellmapper.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    if delay is None:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{args}: exit {proc.returncode}\n{err.decode()[-2000:]}")
        return proc.returncode
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


def complete(dest: Path, kind: str, n_cells: int, *, new: bool = True) -> bool:
    import anndata as ad

    if kind.startswith("stream"):
        return ad.read_zarr(dest).n_obs == n_cells
    if kind.startswith("h5ad"):
        return ad.read_h5ad(dest).n_obs == n_cells
    from napari_cellmapper.io.spatial import open_spatial, query_table, resolve_table

    sdata = open_spatial(dest)
    table = query_table(sdata, resolve_table(sdata, "table"))
    return table.n_obs == n_cells and (not new or "cell_type_pred" in table.obs)


def main(argv: list[str] | None = None) -> int:
    import anndata as ad

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--max-delay", type=float, default=6.0, help="kill after uniform(0.3, this) seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="all", help="comma-separated subset of the export kinds")
    parser.add_argument("--dir", default=None)
    opts = parser.parse_args(argv)
    rng = random.Random(opts.seed)
    folder = Path(opts.dir or tempfile.mkdtemp(prefix="cellmapper-kill-"))
    paths = setup(folder)
    n_query, n_spatial = ad.read_zarr(paths["query"]).n_obs, None
    ad.read_zarr(paths["query"]).write_h5ad(folder / "q.h5ad")
    cmds = commands(paths, folder)
    kinds = list(cmds) if opts.kinds == "all" else opts.kinds.split(",")
    for kind in ("stream-overwrite", "overwrite", "h5ad-overwrite"):  # an old output to replace
        if kind in kinds:
            run(cmds[kind][0], None)
    from napari_cellmapper.io.spatial import open_spatial, resolve_table

    sdata = open_spatial(paths["spatial"])
    n_spatial = sdata.tables[resolve_table(sdata, "table")].n_obs
    sources = {p: digest(p) for p in (paths["ref"], paths["query"], folder / "q.h5ad")}
    killed = finished = 0
    for i in range(opts.rounds):
        kind = kinds[i % len(kinds)]
        args, dest = cmds[kind]
        before = digest(dest) if dest.exists() else None
        code = run(args, rng.uniform(0.3, opts.max_delay))
        killed += code == -signal.SIGKILL
        finished += code == 0
        n = n_query if kind.startswith(("stream", "h5ad")) else n_spatial
        state = "absent" if not dest.exists() else "unchanged" if digest(dest) == before else "new"
        assert state != "new" or complete(dest, kind, n), f"round {i} {kind}: incomplete destination"
        if state != "absent":
            assert complete(dest, kind, n, new=state == "new"), f"round {i} {kind}: unreadable destination"
        for p, d in sources.items():
            assert digest(p) == d, f"round {i} {kind}: source {p} changed"
        print(f"round {i:3d} {kind:17s} exit {code:4d} destination {state}", flush=True)
        if kind == "new-path" and dest.exists() or kind == "stream-new" and dest.exists():
            import shutil

            shutil.rmtree(dest)  # the next new-path round needs the path free
    for kind in kinds:  # one finished run of each kind removes what the killed runs left
        if kind in ("new-path", "stream-new") and cmds[kind][1].exists():
            import shutil

            shutil.rmtree(cmds[kind][1])
        run(cmds[kind][0], None)
    left = [p.name for p in folder.iterdir() if STAGING_MARK in p.name or p.name.endswith("-backup")]
    print(f"{killed} SIGKILLs, {finished} finished runs, staging left: {left}")
    assert not left, left
    return 0


if __name__ == "__main__":
    sys.exit(main())
