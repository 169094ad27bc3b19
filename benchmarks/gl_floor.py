"""The GL floor: 1M GL_POINTS with a one-line shader, time per frame (``glFinish``).

What no layer-side code can go below on this renderer; compare with the ``baseline`` row of
``bench_points_layer.py`` (napari's marker shader drawing the same number of points)::

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \\
        .venv/bin/python benchmarks/gl_floor.py --n 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

VERT = """
attribute vec2 a_pos; attribute vec4 a_color; varying vec4 v_color;
void main() { gl_Position = vec4(a_pos, 0.0, 1.0); gl_PointSize = 1.0; v_color = a_color; }
"""
FRAG = "varying vec4 v_color; void main() { gl_FragColor = v_color; }"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--frames", type=int, default=6)
    args = parser.parse_args()

    from vispy import app, gloo
    from vispy.gloo import gl

    app.use_app("pyqt6")
    rng = np.random.default_rng(0)
    pos = rng.uniform(-1, 1, (args.n, 2)).astype(np.float32)
    col = rng.random((args.n, 4)).astype(np.float32)

    class Canvas(app.Canvas):
        def __init__(self) -> None:
            super().__init__(size=(1200, 900), show=False)
            self.program = gloo.Program(VERT, FRAG)
            self.program["a_pos"], self.program["a_color"] = pos, col
            self.times: list[float] = []
            self.show()

        def on_draw(self, event) -> None:
            gloo.clear()
            start = time.perf_counter()
            self.program.draw("points")
            self.context.flush_commands()
            gl.glFinish()
            self.times.append(time.perf_counter() - start)
            if len(self.times) < args.frames:
                self.update()
                return
            frames = self.times[1:]  # the first frame includes the upload
            print(
                f"{args.n:,} GL_POINTS, one-line shader: median {statistics.median(frames):.3f} s per "
                f"frame ({', '.join(f'{t:.3f}' for t in frames)}); {gl.glGetParameter(gl.GL_RENDERER)}",
                flush=True,
            )
            os._exit(0)  # leaving Qt's loop from a draw callback crashes some builds

    Canvas()
    app.run()


if __name__ == "__main__":
    main()
