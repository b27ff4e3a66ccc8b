"""The scenes of the synthetic dataset: photographs moved by smooth similarity paths, with exact flow.

A :class:`SyntheticScene` is a background layer (a photograph shipped inside the scikit-image wheel, seen
by a camera on a random smooth trajectory) and 1-3 sprites (patches of other photographs with hard or
soft edges) each on its own path. Every layer maps frame pixel ``p`` at time ``t`` to texture coordinates
``q = A(t) p + b(t)``, so the flow of a layer between two times is exact at every pixel
(:meth:`SyntheticScene.flow`); :meth:`SyntheticScene.render` draws the frames with bicubic sampling.
:mod:`~s2svr_lightning.data.datasets.synthetic` turns scenes into dataset sequences.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...models.warp import flow_warp, pixel_grid
from ...utils import to_float_frames

__all__ = ["HELDOUT_PHOTOS", "TRAIN_PHOTOS", "SyntheticScene", "load_photo"]

# Photographs inside the scikit-image wheel (others are fetched from the network: never use them).
# Held-out photographs are used only for validation and test sequences.
TRAIN_PHOTOS = (
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "camera",
    "moon",
    "page",
    "text",
    "cell",
)
# "motorcycle" is the left view of skimage's stereo pair (500x741, colour): with coffee (400x600) it gives
# held-out backgrounds large enough for fast 128 px scenes without enlarging (blurring) the photograph.
HELDOUT_PHOTOS = ("coffee", "chelsea", "motorcycle", "coins", "clock", "horse")
_COLOUR = {
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "coffee",
    "chelsea",
    "motorcycle",
}


@functools.cache
def load_photo(name: str) -> torch.Tensor:
    """A scikit-image sample photograph as ``(3, H, W)`` float32 in [0, 1] (grey ones replicated)."""
    from skimage import data as skdata

    if name not in TRAIN_PHOTOS + HELDOUT_PHOTOS:
        raise ValueError(
            f"expected one of the bundled photographs {TRAIN_PHOTOS + HELDOUT_PHOTOS}, got {name!r}"
        )
    img = np.asarray(skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return to_float_frames(img[..., :3], channels_last=True)


def _quantize_factor(factor: float) -> float:
    """Round a resize factor up to a power of 2^(1/8), so scenes share the few cached resized textures."""
    return float(2.0 ** (math.ceil(8.0 * math.log2(factor) - 1e-9) / 8.0))


@functools.lru_cache(maxsize=64)
def _texture(name: str, factor: float) -> torch.Tensor:
    """The photograph resized by ``factor`` (antialiased when shrinking), ``(3, H, W)``."""
    photo = load_photo(name)
    h, w = photo.shape[-2:]
    size = (max(8, round(h * factor)), max(8, round(w * factor)))
    if size == (h, w):
        return photo
    out = F.interpolate(photo[None], size=size, mode="bicubic", antialias=factor < 1, align_corners=False)
    return out[0].clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Motion: smooth similarity paths

# angular frequencies of the translation wiggles (handheld shake, swaying objects), radians per frame:
# periods of 6 to 20 frames, so one wiggle's excursion is at most 1/0.3 of its speed
_SHAKE = (0.3, 1.0)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wave:
    """``f(t) = v t + sum_k a_k sin(w_k t + phi_k)``: a drift plus slow wiggles (per frame time)."""

    v: float
    a: tuple[float, ...]
    w: tuple[float, ...]
    phi: tuple[float, ...]

    def __call__(self, t: np.ndarray) -> np.ndarray:
        out = self.v * t
        for a, w, phi in zip(self.a, self.w, self.phi):
            out = out + a * np.sin(w * t + phi)
        return out

    def scaled(self, s: float) -> _Wave:
        return _Wave(self.v * s, tuple(a * s for a in self.a), self.w, self.phi)

    @property
    def amplitude(self) -> float:
        """The largest excursion of the wiggles from the drift line."""
        return float(sum(abs(a) for a in self.a))

    @staticmethod
    def random(
        rng: np.random.Generator,
        speed: float,
        wiggle: float,
        harmonics: int = 2,
        frequency: tuple[float, float] = (0.15, 0.6),
    ) -> _Wave:
        """Drift of ``speed`` per frame plus ``harmonics`` wiggles whose speeds add up to ``wiggle``, of
        angular ``frequency`` in radians per frame."""
        w = tuple(float(x) for x in rng.uniform(frequency[0], frequency[1], harmonics))
        share = rng.dirichlet(np.ones(harmonics)) * wiggle
        a = tuple(float(s / wk) for s, wk in zip(share, w))
        phi = tuple(float(x) for x in rng.uniform(0, 2 * math.pi, harmonics))
        return _Wave(float(speed), a, w, phi)


@dataclass(frozen=True)
class _Path:
    """A layer's map from frame pixels to texture coordinates, ``q = A(t) p + b(t)``.

    ``A(t) = zoom(t) R(angle(t))`` and ``q = anchor + A(t) (p - origin(t))``: ``origin(t)`` is the frame
    point that sits on the texture point ``anchor`` (the camera centre for the background, the sprite
    centre for a sprite), ``zoom`` is texture pixels per frame pixel.
    """

    anchor: tuple[float, float]
    origin0: tuple[float, float]
    ox: _Wave
    oy: _Wave
    angle0: float
    angle: _Wave
    log_zoom0: float
    log_zoom: _Wave

    def affine(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``A (n, 2, 2)``, ``b (n, 2)`` in float64 for times ``t (n,)``."""
        t = np.asarray(t, dtype=np.float64)
        theta = self.angle0 + self.angle(t)
        zoom = np.exp(self.log_zoom0 + self.log_zoom(t))
        cos, sin = np.cos(theta) * zoom, np.sin(theta) * zoom
        a = np.stack((np.stack((cos, -sin), -1), np.stack((sin, cos), -1)), -2)
        origin = np.stack((self.origin0[0] + self.ox(t), self.origin0[1] + self.oy(t)), -1)
        b = np.asarray(self.anchor)[None] - np.einsum("nij,nj->ni", a, origin)
        return a, b


def _apply_affine(a: np.ndarray, b: np.ndarray, grid: torch.Tensor) -> torch.Tensor:
    """``A p + b`` on a pixel grid ``(1, 2, H, W)`` -> ``(n, 2, H, W)`` float32."""
    at = torch.from_numpy(a).float()[:, :, :, None, None]  # (n, 2, 2, 1, 1)
    bt = torch.from_numpy(b).float()[:, :, None, None]
    return at[:, :, 0] * grid[:, :1] + at[:, :, 1] * grid[:, 1:] + bt


def _sample(texture: torch.Tensor, coords: torch.Tensor, mode: str = "bicubic") -> torch.Tensor:
    """Sample ``texture (3, Ht, Wt)`` at texture coordinates ``coords (n, 2, H, W)`` (align_corners=True)."""
    ht, wt = texture.shape[-2:]
    gx = coords[:, 0] * (2.0 / (wt - 1)) - 1.0
    gy = coords[:, 1] * (2.0 / (ht - 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    src = texture[None].expand(coords.shape[0], -1, -1, -1)
    return F.grid_sample(src, grid, mode=mode, padding_mode="border", align_corners=True)


# --------------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sprite:
    photo: str
    factor: float
    tint: tuple[float, float, float]
    centre: tuple[float, float]  # texture coordinates of the sprite centre
    half: tuple[float, float]  # half-sizes (texture pixels)
    shape: str  # "ellipse" | "rect"
    edge: float  # width of the alpha ramp (texture pixels)
    path: _Path

    def alpha(self, coords: torch.Tensor) -> torch.Tensor:
        """Coverage ``(n, 1, H, W)`` in [0, 1]: exactly 1 at least ``edge`` inside the border, 0 outside."""
        dx = (coords[:, 0] - self.centre[0]).abs()
        dy = (coords[:, 1] - self.centre[1]).abs()
        hx, hy = self.half
        if self.shape == "ellipse":
            r = torch.sqrt((dx / hx) ** 2 + (dy / hy) ** 2)
            inside = (1.0 - r) * min(hx, hy)  # distance to the border, approximately, in pixels
        else:
            corner = min(hx, hy) * 0.3
            qx, qy = (dx - (hx - corner)).clamp(min=0), (dy - (hy - corner)).clamp(min=0)
            outer = torch.sqrt(qx**2 + qy**2) - corner
            inner = torch.minimum(hx - dx, hy - dy)
            inside = torch.where((qx > 0) & (qy > 0), -outer, inner)
        return (inside / self.edge).clamp(0.0, 1.0).unsqueeze(1)


@dataclass(frozen=True)
class SyntheticScene:
    """One random scene: a background path over a photograph and sprites with their own paths.

    Build with :meth:`random`; render frames at any times with :meth:`render` and the exact flow between
    two times with :meth:`flow`.
    """

    height: int
    width: int
    photo: str
    factor: float
    path: _Path
    sprites: tuple[_Sprite, ...] = field(default_factory=tuple)

    @staticmethod
    def random(
        rng: np.random.Generator,
        *,
        height: int,
        width: int,
        photos: tuple[str, ...],
        duration: tuple[float, float],
        speed: float,
        num_sprites: tuple[int, int] = (1, 3),
        shake: float = 0.5,
        extra_shake: float = 0.0,
        spread: float = 0.6,
    ) -> SyntheticScene:
        """A scene whose camera stays inside its photograph over times ``duration = (t0, t1)``.

        Args:
            speed: the median over scenes of the layers' speed in pixels per frame time; each scene draws
                its own from a log-normal of sigma ``spread`` around it (the long tail of real footage:
                most clips move moderately, a few fast).
            shake: the share of that speed spent as back-and-forth wiggles (handheld shake, periods of
                6-20 frames) rather than steady drift. Drift needs texture in proportion to the length,
                shake does not: drift that would need the photograph enlarged (blurred) is turned into
                shake, so long sequences keep sharp textures.
            extra_shake: speed added as shake on top (deblur: the motion during the exposure).
        """
        big = max(height, width)
        diag = math.hypot(height, width)
        span = duration[1] - duration[0]
        s = speed * math.exp(float(np.clip(rng.normal(0.0, spread), -2.5, 2.5)))
        share = float(np.clip(shake + rng.uniform(-0.25, 0.25), 0.0, 1.0))
        direction = rng.uniform(0, 2 * math.pi)
        waves = [_Wave.random(rng, 0.0, s * share + extra_shake, frequency=_SHAKE) for _ in range(2)]
        drift = s * (1.0 - share)
        # the excursion per unit of shake speed: drift moved into shake grows the shake by as much
        k = max(w.amplitude for w in waves) / max(s * share + extra_shake, 1e-6)
        fixed = diag * 1.15 + 16.0  # rotation, zoom and the fitting margin

        def need(size_drift: float) -> float:
            amplitude = k * (s * share + extra_shake + drift - size_drift)
            return fixed + 2.0 * size_drift * span + 2.0 * amplitude

        # a background photograph large enough for the whole path as shake (never enlarged if any is)
        colour = [p for p in photos if p in _COLOUR] or list(photos)
        fits = [p for p in colour if min(load_photo(p).shape[-2:]) >= need(0.0)]
        photo = str(rng.choice(fits or colour))
        src_h, src_w = load_photo(photo).shape[-2:]
        room = float(min(src_h, src_w))
        if need(drift) > room:  # the drift that fits, the rest as shake
            keep = (room - fixed - 2.0 * k * (s * share + extra_shake + drift)) / max(
                2.0 * span - 2.0 * k, 1e-6
            )
            keep = float(np.clip(keep, 0.0, drift))
            scale = (s * share + extra_shake + drift - keep) / max(s * share + extra_shake, 1e-6)
            waves = [w.scaled(scale) for w in waves]
            drift = keep
        ox = _Wave(drift * math.cos(direction), waves[0].a, waves[0].w, waves[0].phi)
        oy = _Wave(drift * math.sin(direction), waves[1].a, waves[1].w, waves[1].phi)
        # shrink large photographs (more content per frame, sharper texture) but never enlarge beyond need
        factor = max(need(drift) / room, min(1.0, 2.5 * big / room) * rng.uniform(0.6, 1.0))
        factor = _quantize_factor(factor)
        tex_h, tex_w = round(src_h * factor), round(src_w * factor)
        origin = ((width - 1) / 2.0, (height - 1) / 2.0)

        # about half a degree per frame and half a percent zoom per frame at most
        angle = _Wave.random(rng, rng.uniform(-1, 1) * 0.008, rng.uniform(0, 0.004))
        log_zoom = _Wave.random(rng, rng.uniform(-1, 1) * 0.004, rng.uniform(0, 0.003))
        angle0, log_zoom0 = rng.uniform(-0.15, 0.15), math.log(rng.uniform(0.95, 1.1))
        path = _Path((0.0, 0.0), origin, ox, oy, angle0, angle, log_zoom0, log_zoom)
        path = _fit_camera(path, height, width, tex_h, tex_w, duration, rng)

        others = [p for p in photos if p != photo] or [photo]
        count = int(rng.integers(num_sprites[0], num_sprites[1] + 1))
        sprites = tuple(
            _random_sprite(rng, height, width, others, s, big, span, shake, extra_shake, spread)
            for _ in range(count)
        )
        return SyntheticScene(height, width, photo, float(factor), path, sprites)

    def _layers(self):
        yield _texture(self.photo, self.factor), self.path, None
        for sprite in self.sprites:
            tex = _texture(sprite.photo, sprite.factor) * torch.tensor(sprite.tint).view(3, 1, 1)
            yield tex, sprite.path, sprite

    def render(self, times, *, coordinates: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render frames at ``times`` (frame units).

        Args:
            times: sequence of floats.
            coordinates: render each layer's texture coordinates ``(x / 64, y / 64, layer)`` instead of its
                photograph: affine in ``p`` inside a layer, so bilinear warping reproduces them exactly
                (used to verify the flow without interpolation error).

        Returns:
            ``frames (n, 3, H, W)`` float32 (not clipped for coordinates), ``label (n, H, W)`` int64 (the
            top layer with non-zero coverage, 0 = background) and ``pure (n, H, W)`` bool (that layer
            covers the pixel fully).
        """
        times = np.asarray(list(times), dtype=np.float64)
        grid = pixel_grid(self.height, self.width, device=torch.device("cpu"), dtype=torch.float32)
        n = len(times)
        frames = torch.zeros(n, 3, self.height, self.width)
        label = torch.zeros(n, self.height, self.width, dtype=torch.int64)
        pure = torch.ones(n, self.height, self.width, dtype=torch.bool)
        for layer, (texture, path, sprite) in enumerate(self._layers()):
            coords = _apply_affine(*path.affine(times), grid)
            if coordinates:
                value = torch.cat((coords / 64.0, torch.full_like(coords[:, :1], float(layer))), dim=1)
            else:
                value = _sample(texture, coords)
            if sprite is None:
                frames = value
                continue
            alpha = sprite.alpha(coords)
            frames = frames * (1.0 - alpha) + value * alpha
            covered = alpha[:, 0] > 0
            label = torch.where(covered, layer, label)
            pure = torch.where(covered, alpha[:, 0] >= 1.0, pure)
        if not coordinates:
            frames = frames.clamp_(0.0, 1.0)
        return frames, label, pure

    def flow(
        self,
        t1: float,
        t2: float,
        label1: torch.Tensor,
        pure1: torch.Tensor,
        label2: torch.Tensor,
        pure2: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact flow from time ``t1`` to ``t2`` on frame ``t1``'s grid and its validity.

        Args:
            label1, pure1: :meth:`render`'s maps ``(H, W)`` at ``t1``; label2, pure2: at ``t2``.

        Returns:
            ``flow (2, H, W)`` in pixels (x, y) and ``valid (1, H, W)`` float (1 = visible in both frames).
        """
        grid = pixel_grid(self.height, self.width, device=torch.device("cpu"), dtype=torch.float32)
        paths = [self.path, *(sprite.path for sprite in self.sprites)]
        flows = []
        for path in paths:
            a1, b1 = path.affine(np.array([t1]))
            a2, b2 = path.affine(np.array([t2]))
            inv2 = np.linalg.inv(a2[0])
            m = inv2 @ a1[0] - np.eye(2)  # p' - p = (A2^-1 A1 - I) p + A2^-1 (b1 - b2)
            c = inv2 @ (b1[0] - b2[0])
            flows.append(_apply_affine(m[None], c[None], grid)[0])
        flows = torch.stack(flows)  # (L, 2, H, W)
        idx = label1.view(1, 1, *label1.shape).expand(1, 2, -1, -1)
        flow = flows.gather(0, idx)[0]
        # target visible: every bilinear neighbour of p + flow is fully covered by the same layer at t2
        owned = torch.stack([(label2 == k) & pure2 for k in range(len(paths))]).float()  # (L, H, W)
        warped = flow_warp(owned[None], flow[None], padding_mode="zeros")[0]  # (L, H, W)
        there = warped.gather(0, label1[None])[0]
        valid = pure1 & (there >= 1.0 - 1e-4)
        return flow, valid[None].float()


def _fit_camera(
    path: _Path, height: int, width: int, tex_h: int, tex_w: int, duration: tuple[float, float], rng
) -> _Path:
    """Place the camera so that every frame of ``duration`` stays 3 px inside the texture (shrinking the
    motion if it cannot)."""
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64)
    times = np.linspace(duration[0], duration[1], max(2, int(4 * (duration[1] - duration[0])) + 2))
    margin = 3.0
    for _ in range(12):
        a, b = path.affine(times)
        q = np.einsum("nij,cj->nci", a, corners) + b[:, None]
        lo, hi = q.reshape(-1, 2).min(0), q.reshape(-1, 2).max(0)
        room_x = (
            tex_w - 1 - margin - hi[0],
            margin - lo[0],
        )  # anchor range: [margin - lo, W - 1 - margin - hi]
        room_y = (tex_h - 1 - margin - hi[1], margin - lo[1])
        if room_x[0] >= room_x[1] and room_y[0] >= room_y[1]:
            ax = rng.uniform(room_x[1], room_x[0])
            ay = rng.uniform(room_y[1], room_y[0])
            return _Path(
                (ax, ay),
                path.origin0,
                path.ox,
                path.oy,
                path.angle0,
                path.angle,
                path.log_zoom0,
                path.log_zoom,
            )
        path = _Path(
            path.anchor,
            path.origin0,
            path.ox.scaled(0.5),
            path.oy.scaled(0.5),
            path.angle0 * 0.5,
            path.angle.scaled(0.5),
            min(path.log_zoom0, 0.0),
            path.log_zoom.scaled(0.5),
        )
    raise RuntimeError(f"could not fit a {height}x{width} camera path inside a {tex_h}x{tex_w} texture")


def _random_sprite(
    rng,
    height: int,
    width: int,
    photos: list[str],
    speed: float,
    big: int,
    span: float,
    shake: float,
    extra_shake: float,
    spread: float,
) -> _Sprite:
    photo = str(rng.choice(photos))
    src_h, src_w = load_photo(photo).shape[-2:]
    factor = float(min(1.0, 2.5 * big / min(src_h, src_w)) * rng.uniform(0.6, 1.0))
    factor = _quantize_factor(max(factor, (0.6 * big + 16) / min(src_h, src_w)))
    tex_h, tex_w = round(src_h * factor), round(src_w * factor)
    small = min(height, width)
    half = tuple(float(x) for x in rng.uniform(0.1, 0.22, 2) * small)
    pad = max(half) + 6
    centre = (float(rng.uniform(pad, tex_w - 1 - pad)), float(rng.uniform(pad, tex_h - 1 - pad)))
    tint = (1.0, 1.0, 1.0) if photo in _COLOUR else tuple(float(x) for x in rng.uniform(0.55, 1.0, 3))
    shape = "ellipse" if rng.random() < 0.5 else "rect"
    edge = 1.0 if rng.random() < 0.5 else float(rng.uniform(2.0, 4.0))

    start = (float(rng.uniform(0.1, 0.9) * (width - 1)), float(rng.uniform(0.1, 0.9) * (height - 1)))
    direction = rng.uniform(0, 2 * math.pi)
    # objects move on their own, some slower, some faster than the camera
    s = speed * rng.uniform(0.5, 1.5) * math.exp(float(np.clip(rng.normal(0.0, 0.5 * spread), -2.0, 2.0)))
    share = float(np.clip(shake + rng.uniform(-0.25, 0.25), 0.0, 1.0))
    # a sprite crosses the frame at most once over the sequence: faster drift becomes back-and-forth
    drift = min(s * (1.0 - share), big / max(span, 1.0))
    wiggle = s - drift + extra_shake
    ox = _Wave.random(rng, drift * math.cos(direction), wiggle, frequency=_SHAKE)
    oy = _Wave.random(rng, drift * math.sin(direction), wiggle, frequency=_SHAKE)
    angle = _Wave.random(rng, rng.uniform(-1, 1) * 0.03, rng.uniform(0, 0.01))
    log_zoom = _Wave.random(rng, rng.uniform(-1, 1) * 0.005, rng.uniform(0, 0.003))
    # the sprite's map goes frame -> sprite texture: zoom < 1 in texture px per frame px enlarges it
    path = _Path(
        centre,
        start,
        ox,
        oy,
        rng.uniform(-math.pi, math.pi),
        angle,
        math.log(rng.uniform(0.85, 1.2)),
        log_zoom,
    )
    return _Sprite(photo, factor, tint, centre, half, shape, edge, path)  # type: ignore[arg-type]
