"""Kernel launches are serialised only where numba's threading layer needs it."""

import threading

from numba import config

from napari_cellmapper.core import numba_threads


def test_no_lock_with_a_threadsafe_layer(monkeypatch):
    monkeypatch.setattr(numba_threads, "threadsafe_layer_available", lambda: True)
    monkeypatch.setattr(config, "THREADING_LAYER", "default")
    with numba_threads.launch_lock():
        assert not numba_threads._LOCK.locked()


def test_lock_without_one(monkeypatch):
    monkeypatch.setattr(numba_threads, "threadsafe_layer_available", lambda: False)
    with numba_threads.launch_lock():
        assert numba_threads._LOCK.locked()
    assert not numba_threads._LOCK.locked()


def test_lock_when_workqueue_is_chosen(monkeypatch):
    monkeypatch.setattr(numba_threads, "threadsafe_layer_available", lambda: True)
    monkeypatch.setattr(config, "THREADING_LAYER", "workqueue")
    seen = []
    with numba_threads.launch_lock():
        other = threading.Thread(target=lambda: seen.append(numba_threads._LOCK.acquire(timeout=0.05)))
        other.start()
        other.join()
    assert seen == [False]  # a second launcher waits


def test_layer_detection_returns_a_bool():
    assert isinstance(numba_threads.threadsafe_layer_available(), bool)


def test_in_background_runs_the_load_in_a_daemon_thread():
    ran = []
    thread = numba_threads.in_background(lambda: ran.append(threading.current_thread().name), "loader")
    thread.join(timeout=10)
    assert ran == ["loader"] and thread.daemon
