"""benchmarks/xenium_mapping.py: the per-stage profile runs end to end on a tiny Xenium-like store."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import xenium_mapping  # noqa: E402
import xenium_store as xs  # noqa: E402


def test_profile_times_every_stage(tmp_path, capsys):
    store = xs.write_store(tmp_path / "x.zarr", 600, n_genes=60)
    reference = tmp_path / "ref.h5ad"
    xs.make_reference(400, 200, 60).write_h5ad(reference)
    out = xenium_mapping.profile(str(store), str(reference), n_niches=3)
    times = out["times"]
    expected = {"read reference", "open store + table", "cell coordinates", "joint representation", "niches"}
    assert expected <= set(times)
    assert all(wall >= 0 and cpu >= 0 for wall, cpu in times.values())
    stages = [v for k, v in times.items() if k != "end to end"]
    assert abs(sum(w for w, _ in stages) - times["end to end"][0]) < 1e-9
    assert abs(sum(c for _, c in stages) - times["end to end"][1]) < 1e-9
    assert out["n_query"] == 600 and out["n_reference"] == 400 and out["peak_gb"] > 0
    xenium_mapping.main(["--query", str(store), "--reference", str(reference), "--niches", "3"])
    assert "niches" in capsys.readouterr().out
