"""Progress events and the run_steps driver."""

from __future__ import annotations

import pytest

from napari_cellmapper.core.progress import Progress, chunk_bounds, run_steps


def _work(n: int = 3, result: object = "done"):
    for i in range(1, n + 1):
        yield Progress("stage A", i, n)
    yield Progress("stage B", 1, 1)
    return result


def test_run_steps_returns_generator_value():
    assert run_steps(_work(result={"answer": 42})) == {"answer": 42}
    assert run_steps(_work(0, result=7), progress=False) == 7


def test_run_steps_without_events_returns_value():
    def nothing():
        return "x"
        yield  # pragma: no cover

    assert run_steps(nothing(), progress=lambda e: None) == "x"


def test_callback_receives_every_event_in_order():
    events: list[Progress] = []
    assert run_steps(_work(3), progress=events.append) == "done"
    assert events == [
        Progress("stage A", 1, 3),
        Progress("stage A", 2, 3),
        Progress("stage A", 3, 3),
        Progress("stage B", 1, 1),
    ]


def test_silent_progress_writes_nothing(capsys):
    run_steps(_work(), progress=None)
    run_steps(_work(), progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


@pytest.fixture
def no_bar_delay(monkeypatch):
    import napari_cellmapper.core.progress as progress_module

    monkeypatch.setattr(progress_module, "BAR_DELAY", 0)


def test_quick_stages_print_no_bar(capsys):
    assert run_steps(_work(3), progress=True) == "done"
    assert capsys.readouterr().err == ""


def test_true_shows_tqdm_bar_on_stderr(capsys, no_bar_delay):
    assert run_steps(_work(3), progress=True) == "done"
    out = capsys.readouterr()
    assert out.out == ""
    assert "stage A" in out.err
    assert "stage B" in out.err


def test_errors_propagate_and_bars_are_closed(capsys, no_bar_delay):
    def failing():
        yield Progress("doomed", 1, 10)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_steps(failing(), progress=True)
    assert "doomed" in capsys.readouterr().err


def test_progress_is_frozen():
    p = Progress("s", 1, 2)
    with pytest.raises(AttributeError):
        p.done = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("n", "size", "expected"),
    [
        (0, 5, []),
        (5, 5, [(0, 5)]),
        (7, 3, [(0, 3), (3, 6), (6, 7)]),
        (3, 0, [(0, 1), (1, 2), (2, 3)]),  # size clamped to >= 1
    ],
)
def test_chunk_bounds(n, size, expected):
    assert chunk_bounds(n, size) == expected
