"""Per-observation figures: light curve with GTIs, image with regions (PNG, atomic)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .fsutil import atomic_path
from .settings import PLOT_LEVELS, PlotSettings

__all__ = [
    "PLOT_LEVELS",
    "PNG_OPTIONS",
    "figure_canvas",
    "plot_camera_images",
    "plot_image_regions",
    "plot_lightcurve",
    "place_labels",
    "readable_log_axis",
    "save_png",
    "sky_ticks",
    "unicode_log_labels",
    "wants_plot",
    "write_png",
]

#: zlib options of every PNG written (fast level: lossless, slightly larger files).
PNG_OPTIONS = {"compress_level": 1}


def wants_plot(cfg: Any, camera: str | None = None, cameras: Any = ()) -> bool:
    """Whether the ``plots`` level of ``cfg`` (the resolved config or a :class:`PlotSettings`) asks for
    this figure.

    ``all``: every figure; ``none``: no figure; ``summary``: the per-ObsID figures (``camera=None``, e.g. the
    spectrum fit) and the per-camera figures of the first camera of ``cameras`` only.  The level is not part
    of any step's inputs hash: it changes what is drawn, never a science product.
    """
    settings = cfg if isinstance(cfg, PlotSettings) else PlotSettings.from_config(cfg)
    return settings.wants(camera, cameras)


def readable_log_axis(ax: Any, which: str = "both") -> None:
    """Plain-number tick labels on log axes (``2, 3, 5`` rather than ``2x10^0``) when they span < 2 decades.

    On a short range only the 1-2-5 ticks are labelled, so labels never overlap; longer ranges keep
    matplotlib's powers of ten.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for name in ("x", "y") if which == "both" else (which,):
        axis = getattr(ax, f"{name}axis")
        if axis.get_scale() != "log":
            continue
        lo, hi = sorted(getattr(ax, f"get_{name}lim")())
        if lo <= 0 or hi / lo >= 100.0:
            continue
        subs = (1.0, 2.0, 5.0) if hi / lo > 4.0 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
        axis.set_major_locator(LogLocator(base=10.0, subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def unicode_log_labels(ax: Any, which: str = "y") -> None:
    """Decade labels of a log axis as unicode text (``10\u207b\u00b3``) instead of mathtext.

    Same ticks and values as matplotlib's ``10^{-3}`` labels; mathtext parses each new label with
    pyparsing, which cost more than drawing the rest of a fit plot.  Minor ticks stay unlabelled.
    """
    from matplotlib.ticker import FuncFormatter, NullFormatter

    sup = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")

    def label(v: float, _pos: Any) -> str:
        if v <= 0:
            return ""
        e = np.log10(v)
        if abs(e - round(e)) > 1e-9:
            return ""
        return "10" + str(int(round(e))).translate(sup)

    for name in ("x", "y") if which == "both" else (which,):
        axis = getattr(ax, f"{name}axis")
        if axis.get_scale() == "log":
            axis.set_major_formatter(FuncFormatter(label))
            axis.set_minor_formatter(NullFormatter())


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_canvas(fig: Any) -> Any:
    """Attach an Agg canvas to ``fig`` whose renderer keeps the glyph bitmaps of the texts it draws.

    Rendering a string (FreeType layout, then one bitmap per glyph) is most of the cost of a tick label or
    a legend entry, and the figures here draw the same strings (tick labels, axis labels, legends) in the
    same places again and again.  The renderer of :class:`_GlyphCacheRenderer` draws a string it has seen
    at the same sub-pixel phase from the bitmaps it kept: the same pixels as rendering it again.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    class _Canvas(FigureCanvasAgg):
        def get_renderer(self) -> Any:
            w, h = self.get_width_height(physical=True)
            key = w, h, self.figure.dpi
            if self._lastKey != key:
                self.renderer = _glyph_cache_renderer()(w, h, self.figure.dpi)
                self._lastKey = key  # type: ignore[assignment]
            return self.renderer

    return _Canvas(fig)


_GLYPHS_LOCK = threading.Lock()
_GLYPHS: dict[tuple[Any, ...], list[tuple[np.ndarray, int, int]]] = {}
#: Strings kept (each a few glyph bitmaps of ~100 bytes, ~3 MB in all): tick and axis labels, legends and
#: the last ObsIDs' titles; the least recently drawn go first beyond this.
_GLYPHS_MAX = 1024
_RENDERER_CLASS: Any = None


def _glyph_cache_renderer() -> Any:
    """The Agg renderer class with the glyph cache (built once; plain Agg where matplotlib lacks the API)."""
    global _RENDERER_CLASS
    if _RENDERER_CLASS is not None:
        return _RENDERER_CLASS
    import math

    from matplotlib.backends import backend_agg
    from matplotlib.ft2font import FT2Font

    if not all(hasattr(FT2Font, name) for name in ("_layout", "_render_glyph", "_set_transform")):
        _RENDERER_CLASS = backend_agg.RendererAgg  # another matplotlib: its own text drawing
        return _RENDERER_CLASS
    from matplotlib.ft2font import RenderMode

    class _GlyphCacheRenderer(backend_agg.RendererAgg):  # type: ignore[misc]
        """``RendererAgg`` whose ``draw_text`` reuses the glyph bitmaps of a string drawn before.

        A string is rendered as matplotlib 3.11's ``RendererAgg.draw_text`` does (FreeType layout, each
        glyph rendered at its 1/64-pixel position); the bitmaps are kept under the string, its font
        properties, angle, resolution and the sub-pixel phase of its origin, and drawn again shifted by
        whole pixels wherever that string comes at the same phase.
        """

        def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):  # type: ignore[no-untyped-def]
            if ismath:
                return super().draw_text(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)
            features = mtext.get_fontfeatures() if mtext is not None else None
            language = mtext.get_language() if mtext is not None else None
            up = self.height - y  # FreeType's y is upwards
            fx, fy = math.floor(x), math.floor(up)
            key = (
                s,
                tuple(prop.get_family()),
                prop.get_style(),
                prop.get_variant(),
                prop.get_weight(),
                prop.get_stretch(),
                prop.get_size_in_points(),
                prop.get_file(),
                float(angle),
                self.dpi,
                bool(gc.get_antialiased()),
                backend_agg.get_hinting_flag(),
                None if features is None else tuple(features),
                language,
                x - fx,
                up - fy,
            )
            with _GLYPHS_LOCK:
                glyphs = _GLYPHS.pop(key, None)
                if glyphs is not None:
                    _GLYPHS[key] = glyphs  # the most recently used last: the least recently used go first
            if glyphs is None:
                glyphs = self._render_glyphs(x - fx, up - fy, s, prop, angle, features, language, gc)
                with _GLYPHS_LOCK:
                    if len(_GLYPHS) >= _GLYPHS_MAX:
                        del _GLYPHS[next(iter(_GLYPHS))]
                    _GLYPHS[key] = glyphs
            height = int(self.height)
            for buffer, left, top in glyphs:
                # draw_text_image's y is downwards and the bitmap's bottom side.
                self._renderer.draw_text_image(
                    buffer, left + fx, height - (top + fy) + buffer.shape[0], 0, gc
                )
            return None

        def _render_glyphs(self, x, up, s, prop, angle, features, language, gc):  # type: ignore[no-untyped-def]
            """Glyph bitmaps of ``s`` with its origin at (``x``, ``up``) in FreeType's pixel frame."""
            font = self._prepare_font(prop)
            items = font._layout(
                s, flags=backend_agg.get_hinting_flag(), features=features, language=language
            )
            size = prop.get_size_in_points()
            cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            load_flags = backend_agg.get_hinting_flag()
            rotation = (0x10000 * np.array([[cos, -sin], [sin, cos]])).round().astype(int)
            mode = RenderMode.NORMAL if gc.get_antialiased() else RenderMode.MONO
            out = []
            for item in items:
                glyph_font, dx, dy = item.ft_object, item.x, item.y
                glyph_font.set_size(size, self.dpi)
                glyph_font._set_transform(
                    rotation,
                    [round(0x40 * (x + dx * cos - dy * sin)), round(0x40 * (up + dx * sin + dy * cos))],
                )
                bitmap = glyph_font._render_glyph(item.glyph_index, load_flags, mode)
                buffer = np.array(bitmap.buffer, copy=True)
                if not gc.get_antialiased():
                    buffer *= 0xFF
                out.append((buffer, int(bitmap.left), int(bitmap.top)))
            return out

    _RENDERER_CLASS = _GlyphCacheRenderer
    return _RENDERER_CLASS


def place_labels(ax: Any, *, x_in: float | None = None, y_in: float | None = None) -> None:
    """Axis labels at fixed distances [inches] from the axes, and the title right above them.

    Left automatic, matplotlib measures the bounding box of every tick label at draw time to place the
    axis labels and the title (the title measures the whole axis); in a figure with fixed margins the
    distances are known.  ``x_in``: the x label's top below the axes; ``y_in``: the y label's right
    edge left of the axes.
    """
    from matplotlib.transforms import offset_copy

    fig = ax.figure
    if x_in is not None:
        ax.xaxis.set_label_coords(0.5, 0.0, transform=offset_copy(ax.transAxes, fig, y=-x_in, units="inches"))
    if y_in is not None:
        ax.yaxis.set_label_coords(0.0, 0.5, transform=offset_copy(ax.transAxes, fig, x=-y_in, units="inches"))
    ax.title.set_y(1.0)
    ax._autotitlepos = False  # what set_title(y=...) sets: no search over the tick labels for a free place


def save_png(fig: Any, path: str | Path, *, dpi: float, png_filter: int = 2) -> Path:
    """Write ``fig`` atomically as PNG in ONE draw (at ``dpi``, as ``savefig(dpi=dpi)`` draws it).

    The figures place their axes with fixed margins instead of ``tight_layout`` or ``bbox_inches="tight"``:
    each of those draws the whole figure once more (measuring text) before the drawing that is saved, and
    the drawing (tick labels, text layout) is most of a figure's cost.  The canvas is drawn once and its
    pixels encoded by :func:`write_png`.
    """
    fig.set_layout_engine("none")
    if fig.dpi != dpi:
        fig.set_dpi(dpi)
    fig.canvas.draw()
    return write_png(np.asarray(fig.canvas.buffer_rgba()), path, dpi=dpi, png_filter=png_filter)


def write_png(rgba: np.ndarray, path: str | Path, *, dpi: float | None = None, png_filter: int = 0) -> Path:
    """Write an opaque H x W x 4 (or x 3) uint8 pixel array atomically as an 8-bit RGB PNG.

    One PNG filter for every row (``0`` none: best for noisy images; ``2`` up: for plots with flat areas),
    computed in numpy, then zlib level 1 (:data:`PNG_OPTIONS`).  PIL tries all five filters on every row,
    which cost more than the compression; the files are lossless all the same and of similar size.
    ``dpi`` goes into the pHYs chunk, as matplotlib writes it.
    """
    import struct
    import zlib

    rgb = np.asarray(rgba)[..., :3]
    height, width = rgb.shape[:2]
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(height, width * 3)
    data = np.empty((height, width * 3 + 1), dtype=np.uint8)
    data[:, 0] = png_filter
    if png_filter == 0:
        data[:, 1:] = rows
    elif png_filter == 2:
        data[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=data[1:, 1:])  # modulo 256, as PNG's "up" filter
    else:
        raise ValueError(f"PNG filter {png_filter} is not 0 (none) or 2 (up)")

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    if dpi:
        per_metre = int(round(dpi / 0.0254))
        parts.append(chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1)))
    parts.append(chunk(b"IDAT", zlib.compress(data.tobytes(), PNG_OPTIONS["compress_level"])))
    parts.append(chunk(b"IEND", b""))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(b"".join(parts))
    return Path(path)


#: Resolution of the image-with-regions figures [dots per inch].
_IMAGE_DPI = 110
#: The range the colour bar's gradient mesh is built for (once: its pixels are the same for any range).
_BAR_RANGE = (0.1, 1.0)


def plot_lightcurve(res: Any, path: str | Path, *, title: str = "") -> Path:
    """High-energy light curve with kept (green) and removed (red) intervals and the threshold.

    ``res`` is a :class:`xmmcore.flares.FlareResult`.  The figure (axes, tick marks, labels) is built once
    per process and redrawn with each light curve: creating the axes and their ticks cost as much as
    drawing them, and every light curve has the same layout.
    """
    with _LC_LOCK:
        global _LC_FIGURE
        if _LC_FIGURE is None:
            _LC_FIGURE = _LightCurveFigure()
        return _LC_FIGURE.save(res, path, title=title)


class _LightCurveFigure:
    """The axes and artists of :func:`plot_lightcurve`, given new data for each light curve."""

    def __init__(self) -> None:
        from matplotlib.figure import Figure

        _figure()  # the Agg backend, as for every figure here
        # A Figure outside pyplot: kept for the process without pyplot's figure registry holding it.
        self.fig = fig = Figure(figsize=(9, 3.5))
        figure_canvas(fig)
        self.ax = ax = fig.add_subplot()
        fig.subplots_adjust(left=0.075, right=0.985, bottom=0.15, top=0.91)
        (self.curve,) = ax.plot([], [], drawstyle="steps-mid", color="k", lw=0.8)
        self.spans: list[Any] = []
        self.threshold = ax.axhline(0.0, color="tab:red", ls="--", lw=1)
        self.mean = ax.axhline(0.0, color="tab:blue", ls=":", lw=1)
        ax.set_ylabel("rate [ct/s]")
        place_labels(ax, x_in=0.27, y_in=0.45)

    def save(self, res: Any, path: str | Path, *, title: str = "") -> Path:
        from matplotlib.collections import PolyCollection

        ax = self.ax
        t0 = float(res.lc_time[0] - res.bin_s / 2) if res.lc_time.size else 0.0
        t = (res.lc_time - t0) / 1000.0
        self.curve.set_data(t, res.lc_rate)
        self.curve.set_label(f"{res.band_kev[0]:g}-{res.band_kev[1]:g} keV")
        ymax = np.nanmax(res.lc_rate) if np.isfinite(res.lc_rate).any() else 1.0
        for span in self.spans:
            span.remove()
        # The kept intervals as ONE collection of full-height rectangles (what axvspan draws, one patch
        # each: adding a patch updates the data limits through its transforms, the costliest part).
        ax.set_xlim(0.0, 1.0, auto=True)
        ax.set_ylim(0.0, 1.0, auto=None)
        edges = (np.asarray(res.gti, dtype=float).reshape(-1, 2) - t0) / 1000.0
        self.spans = []
        if edges.size:
            verts = [((a, 0.0), (a, 1.0), (b, 1.0), (b, 0.0)) for a, b in edges]
            kept = PolyCollection(
                verts, transform=ax.get_xaxis_transform(), facecolor="tab:green", alpha=0.15, lw=0
            )
            self.spans = [ax.add_collection(kept, autolim=False)]
        for line, value, label in (
            (self.threshold, res.threshold, f"threshold {res.threshold:.3g} ct/s"),
            (self.mean, res.mean, f"quiescent {res.mean:.3g} ct/s"),
        ):
            shown = bool(np.isfinite(value))
            line.set_ydata([value, value] if shown else [0.0, 0.0])
            line.set_visible(shown)
            line.set_label(label if shown else "_hidden")
        ax.relim()
        if edges.size:  # the intervals count in the x range, as axvspan's patches did
            ax.update_datalim([(edges.min(), 0.0), (edges.max(), 0.0)], updatey=False)
        ax.autoscale_view(scalex=True, scaley=False)
        ax.set_ylim(0, 1.1 * ymax if np.isfinite(ymax) and ymax > 0 else 1.0)
        ax.set_xlabel(f"time since {t0:.0f} s (mission time) [ks]")
        ax.set_title(f"{title}  method={res.method}, flare fraction={res.flare_fraction:.1%} (green = kept)")
        ax.legend(loc="upper right", fontsize=8)
        return save_png(self.fig, path, dpi=100)


_LC_LOCK = threading.Lock()
_LC_FIGURE: _LightCurveFigure | None = None


def plot_image_regions(
    image: np.ndarray, wcs: Any, extent: Any, regions: dict[str, Any], path: str | Path, *, title: str = ""
) -> Path:
    """Smoothed 0.5-2 keV count image with the source circle, background annulus and masked point sources.

    Log colour scale with a colour bar in counts per image pixel (after a 1.5-pixel Gaussian smoothing);
    a legend names the source region, the background annulus and the masks. Masked point sources are drawn
    as white-edged red circles with a cross, so they stay visible on bright and faint parts of the image.
    """
    return plot_camera_images([(image, wcs, path, title)], extent, regions)[0]


def plot_camera_images(
    images: Sequence[tuple[np.ndarray, Any, str | Path, str]], extent: Any, regions: dict[str, Any]
) -> list[Path]:
    """:func:`plot_image_regions` for several cameras' ``(image, wcs, path, title)`` on one grid.

    The cameras of an ObsID share the image grid, the WCS and the regions: the regions (circles, legend,
    sky ticks) are drawn once and only the image, its colour range and the title change from one camera
    to the next.  The figure itself (its axes, colour bar and their ticks) is kept for the process and
    laid out again for each ObsID's image size: building it cost as much as drawing it.
    """
    out: list[Path] = []
    with _IMAGE_LOCK:
        global _IMAGE_FIGURE
        if _IMAGE_FIGURE is None:
            _IMAGE_FIGURE = _ImageFigure()
        figure = _IMAGE_FIGURE
        figure.reset()
        for image, wcs, path, title in images:
            if not figure.fits(image, wcs):
                figure.setup(image.shape, wcs, extent, regions)
            out.append(figure.save(image, path, title=title))
    return out


class _ImageFigure:
    """The axes, colour bar and region overlays of an image plot, drawn again for each image."""

    def __init__(self) -> None:
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure

        _figure()  # the Agg backend, as for every figure here
        # A Figure outside pyplot: kept for the process without pyplot's figure registry holding it.
        self.fig = fig = Figure()
        self.canvas = figure_canvas(fig)
        ax: Any = fig.add_axes((0.1, 0.1, 0.7, 0.8))
        self.ax = ax
        self.cax = fig.add_axes((0.85, 0.1, 0.05, 0.8))
        self.shown = ax.imshow(
            np.ones((2, 2)),
            origin="lower",
            cmap="magma",
            interpolation="nearest",
            norm=LogNorm(*_BAR_RANGE),
        )
        self.bar = fig.colorbar(self.shown, cax=self.cax)
        ax.set_xlabel("RA (J2000)")
        ax.set_ylabel("Dec (J2000)")
        place_labels(ax, x_in=0.27, y_in=0.74)
        fig.set_dpi(_IMAGE_DPI)
        fig.set_layout_engine("none")
        self.overlays: list[Any] = []
        self.shape: tuple[int, ...] | None = None
        self._wcs_key = ""
        self._layer: _StaticLayer | None = None

    def reset(self) -> None:
        """Forget the layout: the next image is set up again (another ObsID's regions)."""
        self.shape, self._wcs_key, self._layer = None, "", None

    def setup(self, shape: tuple[int, ...], wcs: Any, extent: Any, regions: dict[str, Any]) -> None:
        """Lay the figure out for images of ``shape`` on ``wcs`` and draw ``regions`` over them."""
        from matplotlib.lines import Line2D
        from matplotlib.patches import Circle

        from .constants import SKY_PIXEL_ARCSEC

        fig, ax = self.fig, self.ax
        self._layer = None  # drawn again at the first image of this layout
        for artist in self.overlays:
            artist.remove()
        self.overlays = []
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
        self.shape, self._wcs_key = tuple(shape), _wcs_key(wcs)
        cx, cy = extent.to_pixel(regions["centre_x"], regions["centre_y"])
        per_arcmin = 60.0 / SKY_PIXEL_ARCSEC / extent.bin_phys
        pix_arcsec = SKY_PIXEL_ARCSEC * extent.bin_phys
        # Crop the array (and its WCS) to the window around the regions.
        half = regions["bkg_outer_arcmin"] * per_arcmin * 1.6
        ny, nx = shape[:2]
        x0, x1 = max(int(cx - half), 0), min(int(cx + half) + 1, nx)
        y0, y1 = max(int(cy - half), 0), min(int(cy + half) + 1, ny)
        self.window = (slice(y0, y1), slice(x0, x1))
        _image_axes(fig, ax, self.cax, (y1 - y0, x1 - x0))
        self.shown.set_data(np.ones((y1 - y0, x1 - x0)))
        self.shown.set_extent((-0.5, x1 - x0 - 0.5, -0.5, y1 - y0 - 0.5))
        self.bar.set_label(f'counts per {pix_arcsec:.0f}" pixel (smoothed)')
        cx, cy = cx - x0, cy - y0
        add = self.overlays.append
        add(
            ax.add_patch(
                Circle((cx, cy), regions["r_src_arcmin"] * per_arcmin, fill=False, ec="lime", lw=1.5)
            )
        )
        for r in (regions["bkg_inner_arcmin"], regions["bkg_outer_arcmin"]):
            add(ax.add_patch(Circle((cx, cy), r * per_arcmin, fill=False, ec="cyan", lw=1.2, ls="--")))
        n_masked = 0
        for p in regions.get("point_sources", []):
            px, py = extent.to_pixel(p["x"], p["y"])
            px, py = px - x0, py - y0
            if not (0 <= px < x1 - x0 and 0 <= py < y1 - y0):
                continue
            n_masked += 1
            r_pix = max(p["r_arcsec"] / 60.0 * per_arcmin, 2.0)
            add(ax.add_patch(Circle((px, py), r_pix, fill=False, ec="white", lw=2.4)))
            add(ax.add_patch(Circle((px, py), r_pix, fill=False, ec="red", lw=1.2)))
            self.overlays += ax.plot([px - r_pix, px + r_pix], [py - r_pix, py + r_pix], color="red", lw=0.8)
            self.overlays += ax.plot([px - r_pix, px + r_pix], [py + r_pix, py - r_pix], color="red", lw=0.8)
        handles = [
            Line2D([], [], color="lime", lw=1.5, label=f"source, R = {regions['r_src_arcmin']:.2f}'"),
            Line2D(
                [],
                [],
                color="cyan",
                lw=1.2,
                ls="--",
                label=f"background {regions['bkg_inner_arcmin']:.2f}'-{regions['bkg_outer_arcmin']:.2f}'",
            ),
            Line2D(
                [],
                [],
                color="red",
                marker="x",
                lw=0,
                markersize=8,
                label=f"masked point sources ({n_masked} in view)",
            ),
        ]
        ax.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.85)
        sky_ticks(ax, wcs[y0:y1, x0:x1], (y1 - y0, x1 - x0))

    def fits(self, image: np.ndarray, wcs: Any) -> bool:
        """Whether ``image`` on ``wcs`` can be drawn with the current layout (same shape and WCS)."""
        return tuple(image.shape) == self.shape and _wcs_key(wcs) == self._wcs_key

    def save(self, image: np.ndarray, path: str | Path, *, title: str = "") -> Path:
        """Draw ``image`` under the layout's static layer, with its colour-bar ticks and title, as PNG.

        Only what changes from one camera to the next is drawn: the image pixels (colour-mapped in numpy at
        the data resolution, then repeated onto the screen pixels, as ``interpolation="nearest"`` does), the
        colour bar's tick labels and the title.  Everything else (frame, sky ticks and labels, regions,
        legend, the colour bar's gradient, which on a log axis is the same for every colour range) is the
        static layer drawn once per layout and composited over the image.
        """
        from matplotlib.colors import LogNorm

        sm = _smoothed_window(image, self.window)
        pos = sm[sm > 0]
        vmin = float(np.percentile(pos, 5)) if pos.size else 1e-3
        vmax = float(max(pos.max(), vmin * 10)) if pos.size else 1.0
        shown = np.maximum(sm, vmin)
        norm = LogNorm(vmin=vmin, vmax=vmax)
        self.shown.set_data(shown)
        self.ax.set_title(title, fontsize=10)
        self.ax._autotitlepos = False  # as place_labels: the title right above the axes
        if self._layer is None:
            # The colour bar's gradient, in the layer, is the mesh it was built with over the range it was
            # built for (on a log axis the same pixels for every range): the mesh is never built again.
            self.cax.set_yscale("log")
            self.cax.set_ylim(*_BAR_RANGE)
            self._layer = _StaticLayer(self.fig, self.ax, hidden=(self.shown, self.cax.yaxis, self.ax.title))
        # The colour bar's axis as a new norm sets it (log scale with default ticks, this image's range).
        self.cax.set_yscale("log")
        self.cax.set_ylim(vmin, vmax)
        unicode_log_labels(self.cax, "y")
        readable_log_axis(self.cax, "y")
        colours = self.shown.cmap(norm(shown), bytes=True)[..., :3]
        buffer = self._layer.composite(colours)
        renderer = self.canvas.get_renderer()
        self.cax.yaxis.draw(renderer)
        self.ax.title.draw(renderer)
        return write_png(buffer, path, dpi=_IMAGE_DPI)


class _StaticLayer:
    """What an image figure draws over its image, rendered once on a transparent canvas.

    ``composite(colours)`` fills the figure's Agg buffer with white, the image's colours on the axes'
    screen pixels (nearest data pixel of each screen pixel's centre) and this layer over them (the "over"
    operator of Agg's non-premultiplied RGBA: differences from drawing it all at once are rounding, at
    most a few 1/255 levels on anti-aliased edges).  The hidden artists (the image and what changes with
    it) are drawn afterwards by the caller onto the same buffer.
    """

    def __init__(self, fig: Any, ax: Any, hidden: Sequence[Any]) -> None:
        face = fig.patch.get_alpha()
        fig.patch.set_alpha(0.0)
        ax.patch.set_visible(False)  # under the image, which covers the axes
        for artist in hidden:
            artist.set_visible(False)
        try:
            fig.canvas.draw()
        finally:
            fig.patch.set_alpha(face)
            ax.patch.set_visible(True)
            for artist in hidden:
                artist.set_visible(True)
        rgba = np.asarray(fig.canvas.buffer_rgba())
        height, width = rgba.shape[:2]
        ny, nx = ax.images[0].get_array().shape[:2]
        box = ax.get_window_extent()
        # Screen pixel centres inside the axes and the data pixel under each (origin="lower": row 0 at the
        # bottom; the buffer's row 0 is the top of the figure).
        cols = np.arange(width) + 0.5
        rows = height - (np.arange(height) + 0.5)
        in_x = (cols >= box.x0) & (cols < box.x1)
        in_y = (rows >= box.y0) & (rows < box.y1)
        ci, ri = np.flatnonzero(in_x), np.flatnonzero(in_y)
        self.rect = (slice(ri[0], ri[-1] + 1), slice(ci[0], ci[-1] + 1))
        self.ix = np.minimum(((cols[in_x] - box.x0) / box.width * nx).astype(int), nx - 1)
        self.iy = np.minimum(((rows[in_y] - box.y0) / box.height * ny).astype(int), ny - 1)
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        # Off the image the layer lies over white: that part is the same for every image.
        self.white = np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        # Over the image only the layer's inked pixels (lines, markers, legend) need blending.
        inked = rgba[self.rect][..., 3].ravel() > 0
        self.inked = np.flatnonzero(inked)
        a = alpha[self.rect].reshape(-1, 1)[self.inked]
        self.over = rgba[self.rect][..., :3].reshape(-1, 3)[self.inked] * a
        self.under = 1.0 - a
        self.fig = fig

    def composite(self, colours: np.ndarray) -> np.ndarray:
        """The figure's Agg buffer (H x W x 4, writable) holding ``colours`` (ny x nx x 3) under the layer."""
        out = np.asarray(self.fig.canvas.buffer_rgba())
        out[..., :3] = self.white
        out[..., 3] = 255
        image = np.take(np.take(colours, self.iy, axis=0), self.ix, axis=1).reshape(-1, 3)
        image[self.inked] = np.rint(self.over + image[self.inked] * self.under)
        out[self.rect][..., :3] = image.reshape(len(self.iy), len(self.ix), 3)
        return out


def _smoothed_window(image: np.ndarray, window: tuple[slice, slice], sigma: float = 1.5) -> np.ndarray:
    """``gaussian_filter(image, sigma)[window]``, filtering only the window and the kernel's reach around it.

    Each smoothed pixel reads the pixels within the kernel radius (``truncate=4`` sigma, scipy's default),
    and the image's own edges keep their reflection: the same numbers as smoothing the whole image.
    """
    from scipy import ndimage

    reach = int(4.0 * sigma + 0.5) + 1
    ny, nx = image.shape[:2]
    (ys, xs) = window
    y0, y1 = max(ys.start - reach, 0), min(ys.stop + reach, ny)
    x0, x1 = max(xs.start - reach, 0), min(xs.stop + reach, nx)
    block = ndimage.gaussian_filter(np.asarray(image[y0:y1, x0:x1], dtype=float), sigma, truncate=4.0)
    return block[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


_IMAGE_LOCK = threading.Lock()
_IMAGE_FIGURE: _ImageFigure | None = None


def _wcs_key(wcs: Any) -> str:
    return str(wcs.to_header_string(relax=True))


def _image_axes(fig: Any, ax: Any, cax: Any, shape: tuple[int, ...]) -> None:
    """Image axes and colour-bar axes placed in inches, the figure sized to the image's aspect.

    Fixed margins fit the sexagesimal tick labels, the axis labels, the title and the colour-bar label, so
    the figure needs no tight bounding box (one draw less) and the image fills it whatever its shape.
    """
    ny, nx = shape[:2]
    height = 4.6
    width = height * nx / max(ny, 1)
    left, bottom, top, pad, bar, right = 1.0, 0.62, 0.32, 0.12, 0.2, 0.78
    fig_w, fig_h = left + width + pad + bar + right, bottom + height + top
    fig.set_size_inches(fig_w, fig_h)
    ax.set_position((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
    cax.set_position(((left + width + pad) / fig_w, bottom / fig_h, bar / fig_w, height / fig_h))


#: Tick spacings tried for RA [s of time] and Dec [arcsec], finest first.
_RA_STEPS_S = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_DEC_STEPS_ARCSEC = (1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 300, 600, 900, 1800, 3600, 7200, 18000, 36000)


def _edge_ticks(
    pix: np.ndarray, value: np.ndarray, steps: tuple[int, ...], max_ticks: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pixel positions of round ``value``s along an edge (``value`` monotonic in ``pix``) and the step."""
    lo, hi = float(np.min(value)), float(np.max(value))
    step = next((s for s in steps if (hi - lo) / s <= max_ticks), steps[-1])
    ticks = np.arange(np.ceil(lo / step) * step, hi, step)
    order = np.argsort(value)
    return np.interp(ticks, value[order], pix[order]), ticks, step


def sky_ticks(ax: Any, wcs: Any, shape: tuple[int, ...]) -> None:
    """Sexagesimal RA ticks on the bottom edge and Dec ticks on the left edge of a pixel-coordinate image.

    The labels are where the WCS puts those coordinates on the edges (as WCSAxes labels them), written as
    plain text: astropy's WCSAxes costs most of a figure's drawing time, with its transforms, coordinate
    range search and mathtext labels, for an image this small.
    """
    ny, nx = shape[:2]
    xs = np.linspace(-0.5, nx - 0.5, 129)
    ys = np.linspace(-0.5, ny - 0.5, 129)
    ra, _ = wcs.wcs_pix2world(xs, np.full_like(xs, -0.5), 0)
    _, dec = wcs.wcs_pix2world(np.full_like(ys, -0.5), ys, 0)
    ra = ra[0] + (np.asarray(ra) - ra[0] + 180.0) % 360.0 - 180.0  # continuous across RA = 0
    x_at, ra_s, ra_step = _edge_ticks(xs, ra * 240.0, _RA_STEPS_S, 5)
    y_at, dec_as, dec_step = _edge_ticks(ys, np.asarray(dec) * 3600.0, _DEC_STEPS_ARCSEC, 6)

    def ra_label(sec: float) -> str:
        total = int(round(sec)) % 86400
        h, m, s = total // 3600, total % 3600 // 60, total % 60
        return f"{h:02d}h{m:02d}m" if ra_step % 60 == 0 else f"{h:02d}h{m:02d}m{s:02d}s"

    def dec_label(arcsec: float) -> str:
        total = int(round(abs(arcsec)))
        sign = "\u2212" if arcsec < 0 else "+"
        d, m, s = total // 3600, total % 3600 // 60, total % 60
        if dec_step % 3600 == 0:
            return f"{sign}{d:02d}\u00b0"
        if dec_step % 60 == 0:
            return f"{sign}{d:02d}\u00b0{m:02d}\u2032"
        return f"{sign}{d:02d}\u00b0{m:02d}\u2032{s:02d}\u2033"

    ax.set_xticks(x_at, [ra_label(v) for v in ra_s])
    ax.set_yticks(y_at, [dec_label(v) for v in dec_as])
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    ax.tick_params(direction="in", top=True, right=True, colors="white", labelcolor="black")
