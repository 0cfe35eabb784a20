"""Build the demo shot's assets: a tiny VAE and the 48 latent files it decodes.

The demo is a decode-only job. In production the latents come from elsewhere (a video
diffusion model, run upstream) and the farm only turns them into frames, so a demo
needs two things: a VAE in the diffusers format and one latent file per frame. No
public VAE fits in a repo, so this script makes both:

1. draws a 48-frame, 512x288 cartoon (sky, moving sun, drifting clouds, hills, a
   bouncing red ball with its shadow, a turning yellow square, the frame number), so
   that a wrong, shuffled or noisy decode is obvious at a glance;
2. trains a small `diffusers.AutoencoderKL` (8x spatial factor and 4 latent channels,
   like Stable Diffusion's) for about 6 minutes on 2 CPU cores: first encoder and
   decoder together on crops and downscaled copies of randomly drawn scenes and of the
   demo frames, then the decoder alone on whole frames (the latents are fixed by then);
3. sets `scaling_factor` to 1 / std of the demo latents (as SD does) and saves the model
   in float16 to `<out>/demo_vae` (config.json + diffusion_pytorch_model.safetensors);
4. writes `<out>/demo_latents/frame_0001.safetensors` ... `frame_0048.safetensors`,
   each with one float16 tensor "latents" of shape (4, 36, 64), already multiplied by
   `scaling_factor` (what a diffusers pipeline returns with output_type="latent");
5. reloads both from disk, decodes every frame, and reports PSNR and decode time.

Everything is seeded, so a rerun on the same software makes the same assets.

    python samples/make_demo.py       # from the repo root; the assets here were made so
    python samples/make_demo.py --steps 20 --decoder-steps 5 --out /tmp/x  # smoke run

About 6.5 minutes on 2 idle cores (6 of them training). The small model learns the
demo's palette far better than arbitrary colours: shapes carry over to new scenes,
colours often do not. It is a test asset, not a general-purpose VAE.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import load_file, save_file

WIDTH, HEIGHT, FRAMES = 512, 288, 48
LATENT_CHANNELS, FACTOR = 4, 8
SEED = 1234

Color = Sequence[float]

# Pillow's bundled font: the same glyphs on every machine, no system fonts needed.
_FONTS: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


# --------------------------------------------------------------------------- drawing


class Canvas:
    """An RGB float image in [0, 1] with anti-aliased shapes drawn from distance fields.

    Each shape is evaluated only inside its bounding box: a frame costs a few ms, so
    hundreds of random training scenes are cheap. Coverage = clip(0.5 - distance) gives
    1 px soft edges, so sub-pixel motion is smooth from frame to frame.
    """

    def __init__(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.w, self.h = width, height
        self.img = np.zeros((height, width, 3), np.float32)

    def _window(self, x0: float, y0: float, x1: float, y1: float):
        xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        xb, yb = min(math.ceil(x1) + 1, self.w), min(math.ceil(y1) + 1, self.h)
        if xa >= xb or ya >= yb:
            return None
        yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32) + 0.5
        return (slice(ya, yb), slice(xa, xb)), xx, yy

    def _blend(self, where: tuple[slice, slice], alpha: np.ndarray, color: Color) -> None:
        a = alpha[..., None]
        region = self.img[where]
        region *= 1.0 - a
        region += a * np.asarray(color, np.float32)

    def gradient(self, top: Color, bottom: Color, y_end: float) -> None:
        g = np.clip((np.arange(self.h, dtype=np.float32) + 0.5) / y_end, 0.0, 1.0)[:, None, None]
        self.img[:] = np.asarray(top, np.float32) * (1 - g) + np.asarray(bottom, np.float32) * g

    def circle(self, cx: float, cy: float, r: float, color: Color, alpha: float = 1.0) -> None:
        win = self._window(cx - r, cy - r, cx + r, cy + r)
        if win:
            where, xx, yy = win
            d = np.hypot(xx - cx, yy - cy) - r
            self._blend(where, np.clip(0.5 - d, 0, 1) * alpha, color)

    def glow(self, cx: float, cy: float, r: float, spread: float, color: Color,
             alpha: float) -> None:
        reach = r + 5 * spread
        win = self._window(cx - reach, cy - reach, cx + reach, cy + reach)
        if win:
            where, xx, yy = win
            d = np.maximum(np.hypot(xx - cx, yy - cy) - r, 0.0)
            self._blend(where, np.exp(-d / spread) * alpha, color)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, color: Color,
                alpha: float = 1.0) -> None:
        win = self._window(cx - rx, cy - ry, cx + rx, cy + ry)
        if win:
            where, xx, yy = win
            # scaled-circle distance: not exact, but fine for a 1 px edge
            d = (np.hypot((xx - cx) / rx, (yy - cy) / ry) - 1.0) * min(rx, ry)
            self._blend(where, np.clip(0.5 - d, 0, 1) * alpha, color)

    def square(self, cx: float, cy: float, half: float, angle: float, color: Color,
               alpha: float = 1.0) -> None:
        reach = half * math.sqrt(2)
        win = self._window(cx - reach, cy - reach, cx + reach, cy + reach)
        if win:
            where, xx, yy = win
            c, s = math.cos(angle), math.sin(angle)
            u = (xx - cx) * c + (yy - cy) * s
            v = (yy - cy) * c - (xx - cx) * s
            d = np.maximum(np.abs(u), np.abs(v)) - half
            self._blend(where, np.clip(0.5 - d, 0, 1) * alpha, color)

    def hills(self, base: float, waves: Sequence[tuple[float, float, float]],
              color: Color) -> None:
        """Fill below y = base + sum(a * sin(x / period + phase))."""
        x = np.arange(self.w, dtype=np.float32) + 0.5
        top = np.full_like(x, base)
        for amp, period, phase in waves:
            top += amp * np.sin(x / period + phase)
        y0 = max(int(top.min()) - 1, 0)
        yy = np.arange(y0, self.h, dtype=np.float32)[:, None] + 0.5
        self._blend((slice(y0, self.h), slice(0, self.w)), np.clip(yy - top + 0.5, 0, 1), color)

    def cloud(self, cx: float, cy: float, scale: float, color: Color) -> None:
        s = scale
        for dx, dy, r in ((0, 0, 22), (-26, 8, 15), (26, 8, 16)):
            self.circle(cx + dx * s, cy + dy * s, r * s, color)
        self.ellipse(cx, cy + 12 * s, 44 * s, 10 * s, color)

    def text(self, x: float, y: float, text: str, size: int, color: Color,
             stroke: int = 0) -> tuple[int, int, int, int]:
        """Draw text with its top-left corner at (x, y); return its box."""
        f = font(size)
        box = f.getbbox(text, stroke_width=stroke)
        tw, th = box[2] - box[0] + 2, box[3] - box[1] + 2
        mask = Image.new("L", (tw, th), 0)
        ImageDraw.Draw(mask).text((1 - box[0], 1 - box[1]), text, fill=255, font=f,
                                  stroke_width=stroke, stroke_fill=255)
        m = np.asarray(mask, np.float32) / 255.0
        xa, ya = round(float(x)), round(float(y))
        x0, y0 = max(xa, 0), max(ya, 0)
        x1, y1 = min(xa + tw, self.w), min(ya + th, self.h)
        if x0 < x1 and y0 < y1:
            self._blend((slice(y0, y1), slice(x0, x1)),
                        m[y0 - ya:y1 - ya, x0 - xa:x1 - xa], color)
        return xa, ya, xa + tw, ya + th

    def plate(self, x0: float, y0: float, x1: float, y1: float, color: Color,
              alpha: float) -> None:
        """A rounded rectangle, e.g. behind text."""
        r = min(8.0, (x1 - x0) / 2, (y1 - y0) / 2)
        win = self._window(x0, y0, x1, y1)
        if win:
            where, xx, yy = win
            qx = np.abs(xx - (x0 + x1) / 2) - ((x1 - x0) / 2 - r)
            qy = np.abs(yy - (y0 + y1) / 2) - ((y1 - y0) / 2 - r)
            d = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(
                np.maximum(qx, qy), 0) - r
            self._blend(where, np.clip(0.5 - d, 0, 1) * alpha, color)


def demo_frame(n: int, total: int = FRAMES) -> np.ndarray:
    """Frame n (1-based) of the demo shot, HxWx3 float32 in [0, 1]."""
    t = (n - 1) / (total - 1)
    c = Canvas()
    c.gradient((0.16, 0.38, 0.78), (0.72, 0.86, 0.98), HEIGHT * 0.75)
    # the sun rises and sets along an arc, behind everything else
    sx, sy = 40 + t * (WIDTH - 80), 120 - 80 * math.sin(math.pi * t)
    c.glow(sx, sy, 26, 16, (1.0, 0.93, 0.55), 0.45)
    c.circle(sx, sy, 26, (1.0, 0.84, 0.2))
    # clouds drift left and wrap around
    for x0, cy, scale in ((380, 58, 1.0), (200, 34, 0.75)):
        cx = (x0 + 80 - 70 * t) % (WIDTH + 160) - 80
        c.cloud(cx, cy, scale, (0.97, 0.98, 1.0))
    c.hills(190, [(18, 70, 0.6), (10, 31, 2.0)], (0.25, 0.56, 0.29))
    # the yellow square turns a half turn on the far hill
    c.square(410, 146, 22, t * math.pi, (0.25, 0.2, 0.05))
    c.square(410, 146, 19, t * math.pi, (1.0, 0.85, 0.1))
    c.hills(226, [(14, 95, 2.4)], (0.45, 0.77, 0.33))
    # three bounces left to right; the shadow shrinks and fades as the ball rises
    ground, r = 264, 22
    bx = 60 + t * 320
    h = 110 * abs(math.sin(3 * math.pi * t))
    k = 1.0 - h / 180
    c.ellipse(bx, ground, 26 * k, 6 * k, (0.05, 0.2, 0.05), 0.5 * k)
    by = ground - r - h
    c.circle(bx, by, r, (0.85, 0.1, 0.12))
    c.circle(bx - 7, by - 7, 6, (1.0, 0.62, 0.6), 0.8)
    # frame number on a slate, so order and identity are checkable by eye
    c.plate(10, 8, 86, 58, (0.05, 0.07, 0.12), 0.75)
    c.text(17, 13, f"{n:02d}", 40, (1.0, 1.0, 1.0), stroke=1)
    return c.img


# The demo's palette. Random scenes mostly jitter these (a short CPU run cannot learn
# every colour well, and these are the ones that matter); 1 in 5 colours is arbitrary.
PALETTE = {
    "sky": [(0.16, 0.38, 0.78), (0.72, 0.86, 0.98), (0.95, 0.55, 0.3), (0.08, 0.1, 0.3)],
    "ground": [(0.25, 0.56, 0.29), (0.45, 0.77, 0.33), (0.55, 0.45, 0.25), (0.3, 0.4, 0.6)],
    "thing": [(0.85, 0.1, 0.12), (1.0, 0.85, 0.1), (1.0, 0.84, 0.2), (0.2, 0.4, 0.9),
              (0.97, 0.98, 1.0), (0.05, 0.07, 0.12), (0.95, 0.5, 0.1)],
}


def _color(rng: np.random.Generator, kind: str, jitter: float = 0.08) -> np.ndarray:
    if rng.random() < 0.2:
        return rng.uniform(0, 1, 3).astype(np.float32)
    base = np.asarray(PALETTE[kind][rng.integers(len(PALETTE[kind]))], np.float32)
    return np.clip(base + rng.normal(0, jitter, 3), 0, 1).astype(np.float32)


def random_scene(rng: np.random.Generator) -> np.ndarray:
    """A random scene in the demo's visual vocabulary: varied layouts, sizes, counts and
    colours, so the VAE learns the shapes rather than the 48 demo frames by heart."""
    c = Canvas()
    top = _color(rng, "sky", 0.1)
    c.gradient(top, np.clip(top + rng.normal(0.3, 0.15, 3), 0, 1), rng.uniform(0.4, 1.2) * HEIGHT)
    if rng.random() < 0.7:  # sun or moon, sometimes with a glow
        sx, sy, sr = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT * 0.6), rng.uniform(8, 45)
        col = _color(rng, "thing")
        if rng.random() < 0.6:
            c.glow(sx, sy, sr, rng.uniform(5, 25), col, rng.uniform(0.2, 0.6))
        c.circle(sx, sy, sr, col)
    for _ in range(rng.integers(0, 4)):
        grey = rng.uniform(0.8, 1.0)
        c.cloud(rng.uniform(-40, WIDTH + 40), rng.uniform(10, 120), rng.uniform(0.4, 1.5),
                (grey, grey, min(grey + 0.03, 1.0)))
    for base in np.sort(rng.uniform(HEIGHT * 0.4, HEIGHT * 0.95, rng.integers(0, 4))):
        waves = [(rng.uniform(2, 35), rng.uniform(15, 150), rng.uniform(0, 6.3))
                 for _ in range(rng.integers(1, 3))]
        c.hills(base, waves, _color(rng, "ground"))
        for _ in range(rng.integers(0, 3)):  # turning squares, often outlined
            half, ang = rng.uniform(5, 40), rng.uniform(0, 2 * math.pi)
            x, y = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
            if rng.random() < 0.6:
                c.square(x, y, half + rng.uniform(1.5, 4), ang, (0.25, 0.2, 0.05))
            c.square(x, y, half, ang, _color(rng, "thing"))
    for _ in range(rng.integers(0, 4)):  # balls, with a shadow and a highlight
        x, y, r = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(5, 45)
        if rng.random() < 0.6:
            k = rng.uniform(0.4, 1.0)
            c.ellipse(x, y + r + rng.uniform(0, 100), r * 1.2 * k, r * 0.3 * k,
                      (0.05, 0.2, 0.05), 0.5 * k)
        c.circle(x, y, r, _color(rng, "thing"))
        if rng.random() < 0.6:
            c.circle(x - r / 3, y - r / 3, r / 4, (1.0, 0.62, 0.6), 0.8)
    for _ in range(rng.integers(0, 3)):  # slates and labels: digits mostly
        digits = rng.random() < 0.6
        alphabet = "0123456789" if digits else "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        text = "".join(rng.choice(list(alphabet), 2 if digits else rng.integers(1, 6)))
        size = int(rng.integers(30, 50)) if digits else int(rng.integers(16, 64))
        x, y = rng.uniform(-20, WIDTH - 40), rng.uniform(-10, HEIGHT - 30)
        if rng.random() < 0.6:
            w = len(text) * size * 0.62
            c.plate(x - 7, y - 5, x + w + 7, y + size * 1.15, _color(rng, "thing"),
                    rng.uniform(0.6, 0.9))
        c.text(x, y, text, size, _color(rng, "thing"), stroke=int(rng.integers(0, 3)))
    return c.img


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- model


def make_vae(channels: Sequence[int], groups: int) -> AutoencoderKL:
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        norm_num_groups=groups,
        sample_size=256,
    )
    # Zero the last layer of every residual branch (resnet conv2, attention output) so
    # each block starts as the identity: the net begins shallow and trains several
    # times faster, which matters on a few minutes of CPU. The format is unchanged.
    for name, module in vae.named_modules():
        if name.endswith(("conv2", "to_out.0")):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return vae


class Sampler:
    """Training batches: random crops of full-size frames and of 2x downscaled ones.

    Frames are kept as uint8 (N, 3, H, W) and converted per batch. `demo_frac` of the
    crops come from the demo frames, which are what the farm will decode.
    """

    def __init__(self, demo: torch.Tensor, scenes: torch.Tensor, crop: int, demo_frac: float,
                 small_frac: float, gen: torch.Generator) -> None:
        self.sets = {
            "demo": demo,
            "scenes": scenes,
            "demo_small": F.avg_pool2d(demo.float(), 2).round().to(torch.uint8),
            "scenes_small": F.avg_pool2d(scenes.float(), 2).round().to(torch.uint8),
        }
        self.crop, self.demo_frac, self.small_frac, self.gen = crop, demo_frac, small_frac, gen

    def _int(self, hi: int) -> int:
        return int(torch.randint(hi, (1,), generator=self.gen))

    def batch(self, size: int) -> torch.Tensor:
        out = torch.empty(size, 3, self.crop, self.crop, dtype=torch.uint8)
        for i in range(size):
            name = "demo" if torch.rand(1, generator=self.gen) < self.demo_frac else "scenes"
            if torch.rand(1, generator=self.gen) < self.small_frac:
                name += "_small"
            frames = self.sets[name]
            _, _, h, w = frames.shape
            ch = min(self.crop, h)
            y, x = self._int(h - ch + 1), self._int(w - self.crop + 1)
            crop = frames[self._int(len(frames)), :, y:y + ch, x:x + self.crop]
            if ch < self.crop:  # 144 px tall downscaled frame: pad by reflection
                crop = F.pad(crop[None].float(), (0, 0, 0, self.crop - ch),
                             mode="reflect")[0].to(torch.uint8)
            if torch.rand(1, generator=self.gen) < 0.5:
                crop = crop.flip(-1)
            out[i] = crop
        return out.float() / 127.5 - 1.0


def train(vae: AutoencoderKL, sampler: Sampler, steps: int, batch: int, lr: float,
          kl_weight: float, mse_weight: float, gen: torch.Generator, log_every: int = 50,
          probe: Callable[[], str] | None = None, probe_every: int = 0) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(steps // 20, 1)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine down to 2 %
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(steps - warmup, 1)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    vae.train()
    t0, run_l1 = time.perf_counter(), 0.0
    for step in range(steps):
        x = sampler.batch(batch)
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample(generator=gen)).sample
        l1 = (y - x).abs().mean()
        # LDM weighs a summed KL against a summed reconstruction error; per input value
        # here, so kl_weight means the same thing as in SD's VAE config.
        kl = post.kl().mean() / x[0].numel()
        loss = l1 + mse_weight * (y - x).pow(2).mean() + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        run_l1 += l1.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            el = time.perf_counter() - t0
            print(f"  step {step + 1:5d}/{steps}  l1 {run_l1 / n:.4f}  "
                  f"lr {sched.get_last_lr()[0]:.2e}  {el:6.1f}s", flush=True)
            run_l1 = 0.0
        if probe and probe_every and (step + 1) % probe_every == 0:
            vae.eval()
            print(f"  probe at {step + 1}: {probe()}", flush=True)
            vae.train()
    vae.eval()


def encode_mean(vae: AutoencoderKL, frames: torch.Tensor) -> torch.Tensor:
    """Posterior means of uint8 (N, 3, H, W) frames, in batches of 8."""
    with torch.no_grad():  # not inference_mode: the result feeds a training step
        return torch.cat([vae.encode(frames[i:i + 8].float() / 127.5 - 1).latent_dist.mean
                          for i in range(0, len(frames), 8)])


def finetune_decoder(vae: AutoencoderKL, demo: torch.Tensor, demo_latents: torch.Tensor,
                     scenes: torch.Tensor, steps: int, lr: float, mse_weight: float,
                     demo_frac: float, gen: torch.Generator, log_every: int = 25) -> None:
    """Fine-tune the decoder alone on whole frames, with the encoder frozen.

    The demo latents are fixed once the encoder is, so this trains on exactly what the
    farm will decode (full 512x288 frames, the float16-rounded stored latents), at about
    half the cost of a joint step; SD's own improved VAE decoders were made the same way.
    Random scenes stay in the mix so the decoder keeps working on other latents.
    `demo` and `scenes` are uint8 (N, 3, H, W); `demo_latents` unscaled.
    """
    vae.eval()
    scene_latents = encode_mean(vae, scenes)
    sets = [(demo, demo_latents), (scenes, scene_latents)]
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    vae.decoder.train()
    t0, run_l1 = time.perf_counter(), 0.0
    for step in range(steps):
        frames, lats = sets[0] if torch.rand(1, generator=gen) < demo_frac else sets[1]
        i = int(torch.randint(len(frames), (1,), generator=gen))
        x = frames[i:i + 1].float() / 127.5 - 1
        y = vae.decode(lats[i:i + 1]).sample
        l1 = (y - x).abs().mean()
        loss = l1 + mse_weight * (y - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        run_l1 += l1.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            print(f"  decoder step {step + 1:5d}/{steps}  l1 {run_l1 / n:.4f}  "
                  f"{time.perf_counter() - t0:6.1f}s", flush=True)
            run_l1 = 0.0
    vae.eval()


# --------------------------------------------------------------------------- checks


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def side_by_side(original: np.ndarray, decoded: np.ndarray, path: Path) -> None:
    gap = np.full((original.shape[0], 8, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([original, gap, decoded], axis=1)).save(path)


def verify(out: Path, frames: np.ndarray, check_png: Path) -> dict[str, float]:
    """Decode the saved latents with the saved model, as the farm would."""
    vae = AutoencoderKL.from_pretrained(out / "demo_vae", torch_dtype=torch.float32).eval()
    sf = vae.config.scaling_factor
    psnrs, times, decoded = [], [], []
    with torch.inference_mode():
        vae.decode(torch.zeros(1, LATENT_CHANNELS, HEIGHT // FACTOR, WIDTH // FACTOR))  # warm-up
        for n in range(1, FRAMES + 1):
            lat = load_file(out / "demo_latents" / f"frame_{n:04d}.safetensors")["latents"]
            assert lat.shape == (LATENT_CHANNELS, HEIGHT // FACTOR, WIDTH // FACTOR), lat.shape
            assert lat.dtype == torch.float16, lat.dtype
            t0 = time.perf_counter()
            img = vae.decode(lat[None].float() / sf).sample
            times.append(time.perf_counter() - t0)
            img = (img / 2 + 0.5).clamp(0, 1)[0]
            ref = torch.from_numpy(frames[n - 1]).permute(2, 0, 1).float() / 255
            psnrs.append(psnr(img, ref))
            decoded.append(to_uint8(img.permute(1, 2, 0).numpy()))
        # a farm worker may get a single core: time that too
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        one = []
        for _ in range(3):
            t0 = time.perf_counter()
            vae.decode(lat[None].float() / sf)
            one.append(time.perf_counter() - t0)
        torch.set_num_threads(threads)
    worst = int(np.argmin(psnrs))
    pick = FRAMES // 2 - 1
    side_by_side(frames[pick], decoded[pick], check_png)
    print(f"  PSNR mean {np.mean(psnrs):.2f} dB, min {psnrs[worst]:.2f} dB (frame {worst + 1})")
    print(f"  decode (float32) {np.mean(times) * 1000:.0f} ms/frame mean, "
          f"{np.median(times) * 1000:.0f} ms median on {threads} threads; "
          f"{np.median(one) * 1000:.0f} ms on 1 thread")
    print(f"  frame {pick + 1}: original | decoded -> {check_png}")
    return {"psnr_mean": float(np.mean(psnrs)), "psnr_min": float(min(psnrs)),
            "decode_s": float(np.mean(times)), "decode_1t_s": float(np.median(one))}


def roundtrip_psnr(vae: AutoencoderKL, scenes: np.ndarray) -> float:
    """Mean encode->decode PSNR over full frames (uint8 HxWx3)."""
    vals = []
    with torch.inference_mode():
        for img in scenes:
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mean).sample
            vals.append(psnr((y / 2 + 0.5).clamp(0, 1), (x / 2 + 0.5)))
    return float(np.mean(vals))


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="folder for demo_vae/ and demo_latents/ (default: samples/)")
    ap.add_argument("--steps", type=int, default=500, help="joint encoder+decoder steps")
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--crop", type=int, default=96, help="training crop size, multiple of 8")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--decoder-steps", type=int, default=250, help="decoder-only steps")
    ap.add_argument("--decoder-lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--mse-weight", type=float, default=4.0,
                    help="MSE is what PSNR measures; L1 (weight 1) keeps edges crisp")
    ap.add_argument("--logvar-init", type=float, default=-8.0)
    ap.add_argument("--channels", type=str, default="16,32,64,64")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--scenes", type=int, default=256, help="random training scenes")
    ap.add_argument("--demo-frac", type=float, default=0.75,
                    help="share of training samples from the demo frames")
    ap.add_argument("--small-frac", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-every", type=int, default=0,
                    help="report demo/held-out PSNR every N steps (slow; for tuning)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--check-png", type=Path, default=Path("/tmp/demo_check.png"))
    args = ap.parse_args()
    # diffusers warns that accelerate is missing and that the float16 cast keeps no
    # modules in float32; both are harmless for a 1 M parameter model
    diffusers.utils.logging.set_verbosity_error()

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    channels = [int(c) for c in args.channels.split(",")]
    if any(c % args.groups for c in channels):
        ap.error(f"--groups {args.groups} must divide every channel count in {channels}")

    print(f"drawing {FRAMES} demo frames and {args.scenes} random scenes ...", flush=True)
    demo = np.stack([to_uint8(demo_frame(n)) for n in range(1, FRAMES + 1)])
    scenes = np.stack([to_uint8(random_scene(rng)) for _ in range(args.scenes)])
    heldout = np.stack([to_uint8(random_scene(rng)) for _ in range(8)])
    print(f"  {time.perf_counter() - t_start:.1f}s", flush=True)

    vae = make_vae(channels, args.groups)
    # Start with a narrow posterior (std ~0.02): with a KL weight of 1e-6 it ends up
    # nearly deterministic anyway, and a short run should not spend steps getting there.
    with torch.no_grad():
        vae.quant_conv.bias[LATENT_CHANNELS:] = args.logvar_init
    n_params = sum(p.numel() for p in vae.parameters())
    demo_t = torch.from_numpy(demo).permute(0, 3, 1, 2).contiguous()
    scenes_t = torch.from_numpy(scenes).permute(0, 3, 1, 2).contiguous()

    def probe() -> str:
        demo_db = roundtrip_psnr(vae, demo[::8])
        return f"demo {demo_db:.2f} dB, held-out {roundtrip_psnr(vae, heldout):.2f} dB"

    print(f"[1/2] training AutoencoderKL {tuple(channels)}: {n_params / 1e6:.2f} M parameters, "
          f"{args.steps} steps of {args.batch}x{args.crop}px crops", flush=True)
    t_train = time.perf_counter()
    sampler = Sampler(demo_t, scenes_t, args.crop, args.demo_frac, args.small_frac, gen)
    train(vae, sampler, args.steps, args.batch, args.lr, args.kl_weight, args.mse_weight, gen,
          probe=probe, probe_every=args.probe_every)

    # The encoder is final from here on, so the stored latents are too.
    # SD convention: scaled latents have unit variance, what diffusion models expect.
    means = encode_mean(vae, demo_t)
    sf = float(1.0 / means.std())
    stored = (means * sf).to(torch.float16)
    vae.register_to_config(scaling_factor=sf)
    print(f"  scaling_factor {sf:.5f}", flush=True)

    print(f"[2/2] fine-tuning the decoder on whole frames: {args.decoder_steps} steps",
          flush=True)
    finetune_decoder(vae, demo_t, stored.float() / sf, scenes_t[:48], args.decoder_steps,
                     args.decoder_lr, args.mse_weight, args.demo_frac, gen)
    t_train = time.perf_counter() - t_train
    held = roundtrip_psnr(vae, heldout)
    print(f"  trained in {t_train:.0f}s; held-out random scenes (never trained on): "
          f"encode+decode PSNR {held:.2f} dB", flush=True)

    out: Path = args.out
    model_dir, lat_dir = out / "demo_vae", out / "demo_latents"
    # float16 on disk halves the size; from_pretrained(torch_dtype=float32) upcasts it
    vae.to(torch.float16).save_pretrained(model_dir, safe_serialization=True)
    lat_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, FRAMES + 1):
        save_file({"latents": stored[n - 1].contiguous()},
                  lat_dir / f"frame_{n:04d}.safetensors")
    size = sum(f.stat().st_size for f in model_dir.iterdir())
    print(f"saved {model_dir} ({size / 1e6:.2f} MB) and {FRAMES} latents in {lat_dir}")

    print("verifying from disk ...", flush=True)
    result = verify(out, demo, args.check_png)
    total = time.perf_counter() - t_start
    print(json.dumps({"channels": channels, "params": n_params, "steps": args.steps,
                      "decoder_steps": args.decoder_steps,
                      "scaling_factor": round(sf, 6), "model_bytes": size,
                      "psnr_mean_db": round(result["psnr_mean"], 2),
                      "psnr_min_db": round(result["psnr_min"], 2),
                      "heldout_psnr_db": round(held, 2),
                      "decode_ms": round(result["decode_s"] * 1000, 1),
                      "decode_1thread_ms": round(result["decode_1t_s"] * 1000, 1),
                      "train_s": round(t_train, 1), "total_s": round(total, 1)}))


if __name__ == "__main__":
    main()
