"""Nearest-neighbour search: the :class:`~.neighbors.Neighbors` result, the backend registry and
``backend="auto"`` (:mod:`.neighbors`), and one module per backend: faiss on the CPU
(:mod:`.faiss_index`, with the numba IVF scan in :mod:`.ivf_scan`), cupy on the GPU
(:mod:`.cupy_index`, :mod:`.cupy_ivf`) and query chunks on a dask cluster (:mod:`.dask_map`)."""
