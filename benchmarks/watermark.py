"""Watermark robustness and invisibility on the CPU (issue 18) -> benchmarks/results/watermark.json.

    python benchmarks/watermark.py [--out PATH] [--clips N] [--keys N] [--workers N]

Content: scikit-image's sample photographs (benchmark-only dependency) cover-cropped to
16:9 and scaled to 1920x1080, two frames of the demo drawing (samples/make_demo.py)
scaled up, and a smooth gradient. Each is marked as a run marks it (pattern, masked add).

- invisibility: PSNR per frame (min, mean), SSIM (mean; scikit-image, on luma), the
  largest change on the gradient.
- still attacks (every frame): JPEG q50, resize to 0.5 and 0.25 of each side, a centre
  crop keeping 50 % of the area, brightness +-10 %, Gaussian noise sigma 2; per attack the
  fraction whose payload comes back exactly and the mean raw bit accuracy (before BCH).
- video attacks (24-frame clips of a slow pan over a frame): the product's own MP4 writer
  (pipeline.files.video.VideoFile) at the default libx264 CRF 18 veryfast, at CRF 28, and
  libx265 CRF 28; decoded with PyAV, frames combined by the detector.
- false positives: unmarked frames, their attacked versions, crops and noise, each read
  with many keys (a p-value under 1e-6 with any key counts as found).
- side by side: invisible-watermark's dwtDct and dwtDctSvd (64 bits) on the same frames
  and still attacks, if that package imports (it is not a framefarm dependency).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.files.pictures import read_pictures
from pipeline.files.video import VideoFile
from pipeline.watermark.code import encode
from pipeline.watermark.detect import (
    CANDIDATES,
    P_THRESHOLD,
    candidate_tiles,
    detect,
    detect_frames,
    luma,
    read_spectrum,
)
from pipeline.watermark.embed import embed
from pipeline.watermark.pattern import pattern

ROOT = Path(__file__).resolve().parent.parent
HEIGHT, WIDTH = 1080, 1920
KEY, PAYLOAD = "benchmark-key", "FF-18-ok"
PHOTOS = ["astronaut", "coffee", "chelsea", "camera", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina", "brick", "gravel", "cat"]


def cover(image: np.ndarray, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    image = image[..., :3]
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    big = np.asarray(Image.fromarray(image.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS))
    top, left = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
    return np.ascontiguousarray(big[top:top + height, left:left + width])


def content() -> dict[str, np.ndarray]:
    import skimage.data

    frames = {name: cover(getattr(skimage.data, name)()) for name in PHOTOS}
    spec = importlib.util.spec_from_file_location("make_demo", ROOT / "samples" / "make_demo.py")
    assert spec and spec.loader
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    for n in (1, 30):
        frames[f"demo_{n}"] = cover(demo.to_uint8(demo.demo_frame(n)))
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / np.array([HEIGHT, WIDTH])[:, None, None]
    frames["gradient"] = np.stack([40 + 180 * x, 60 + 120 * y, 200 - 120 * x * y], -1).round().astype(np.uint8)
    return frames


def mark(image: np.ndarray, offsets: torch.Tensor) -> np.ndarray:
    tensor = torch.from_numpy(image.copy())
    embed(tensor, offsets)
    return tensor.numpy()


def jpeg(image: np.ndarray, quality: int = 50) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def resize(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC))


def centre_crop(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = round(h / 2**0.5), round(w / 2**0.5)
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(image[top:top + ch, left:left + cw])


def scale_light(image: np.ndarray, factor: float) -> np.ndarray:
    return (image * factor).round().clip(0, 255).astype(np.uint8)


def noise(image: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(int(image[::97, ::89].sum()))
    return (image + rng.normal(0, 2, image.shape)).round().clip(0, 255).astype(np.uint8)


STILL_ATTACKS = {
    "none": lambda image: image,
    "jpeg_q50": jpeg,
    "resize_0.5": lambda image: resize(image, 0.5),
    "resize_0.25": lambda image: resize(image, 0.25),
    "centre_crop_50pct_area": centre_crop,
    "brightness_+10pct": lambda image: scale_light(image, 1.1),
    "brightness_-10pct": lambda image: scale_light(image, 0.9),
    "gaussian_noise_sigma_2": noise,
}
VIDEO_ATTACKS = {   # (codec, crf, preset): the product's writer at its default, and at CRF 28
    "mp4_default_libx264_crf18": ("libx264", 18, "veryfast"),
    "libx264_crf28_yuv420p": ("libx264", 28, "veryfast"),
    "libx265_crf28": ("libx265", 28, "veryfast"),
}


def ssim_luma(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(luma(a), luma(b), data_range=255.0))


def still_job(args: tuple[str, np.ndarray]) -> dict[str, Any]:
    """One frame: mark it, measure it, attack it every way, read each back."""
    torch.set_num_threads(1)
    name, image = args
    offsets = torch.from_numpy(pattern(KEY, PAYLOAD, HEIGHT, WIDTH))
    start = time.perf_counter()
    marked = mark(image, offsets)
    embed_s = time.perf_counter() - start
    difference = marked.astype(np.float64) - image
    row: dict[str, Any] = {"frame": name, "embed_s_cpu_1core": round(embed_s, 4),
                           "psnr_db": round(float(10 * np.log10(255**2 / np.mean(difference**2))), 3),
                           "ssim": round(ssim_luma(marked, image), 5),
                           "max_change": int(np.abs(difference).max()), "attacks": {}}
    truth = encode(PAYLOAD)
    for attack, apply in STILL_ATTACKS.items():
        start = time.perf_counter()
        found = detect(apply(marked), KEY)
        row["attacks"][attack] = {
            "recovered": found.found and found.payload == PAYLOAD,
            "bit_accuracy": float(np.mean(found.code_bits == truth)) if found.code_bits is not None else 0.0,
            "p_value": found.p_value, "detect_s": round(time.perf_counter() - start, 3)}
    return row


def clip_frames(image: np.ndarray, count: int = 24) -> list[np.ndarray]:
    """A slow pan (2 px a frame) with a gentle zoom out: every frame differs, as in a shot."""
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    wide = F.interpolate(tensor, scale_factor=1.06, mode="bicubic", align_corners=False)[0]
    wide = wide.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return [np.ascontiguousarray(wide[i:i + HEIGHT, 2 * i:2 * i + WIDTH]) for i in range(count)]


def video_job(args: tuple[str, np.ndarray, str]) -> dict[str, Any]:
    torch.set_num_threads(1)
    name, image, attack = args
    codec, crf, preset = VIDEO_ATTACKS[attack]
    offsets = torch.from_numpy(pattern(KEY, PAYLOAD, HEIGHT, WIDTH))
    with tempfile.TemporaryDirectory() as tmp:
        video = VideoFile(Path(tmp) / "clip.mp4", width=WIDTH, height=HEIGHT, fps=24, codec=codec, crf=crf,
                          preset=preset)
        for frame in clip_frames(image):
            video.add(mark(frame, offsets))
        video.finish()
        start = time.perf_counter()
        found = detect_frames(read_pictures(Path(tmp) / "clip.mp4", 24), KEY)
    truth = encode(PAYLOAD)
    return {"clip": name, "attack": attack, "recovered": found.found and found.payload == PAYLOAD,
            "bit_accuracy": float(np.mean(found.code_bits == truth)) if found.code_bits is not None else 0.0,
            "p_value": found.p_value, "frames": found.frames, "detect_s": round(time.perf_counter() - start, 2)}


def false_positive_job(args: tuple[str, np.ndarray, int]) -> dict[str, Any]:
    """One unmarked picture read with `keys` keys (the benchmark's own key among them)."""
    torch.set_num_threads(1)
    name, image, keys = args
    spectra = {period: np.fft.fft2(tile) for period, tile in candidate_tiles([luma(image)]).items()}
    smallest, found = 1.0, 0
    for k in range(keys):
        key = KEY if k == 0 else f"fp-key-{name}-{k}"
        best = min(read_spectrum(spectrum, key, period=period, trials=CANDIDATES).p_value
                   for period, spectrum in spectra.items())
        smallest = min(smallest, best)
        found += best <= P_THRESHOLD
    return {"input": name, "keys": keys, "found": found, "smallest_p": smallest}


def unmarked_inputs(frames: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(18)
    out = []
    for name, image in frames.items():
        out += [(name, image), (f"{name}/jpeg50", jpeg(image)), (f"{name}/half", resize(image, 0.5)),
                (f"{name}/crop", centre_crop(image))]
    for i in range(4):
        out.append((f"noise{i}", rng.integers(0, 256, (HEIGHT // 2, WIDTH // 2, 3), dtype=np.uint8)))
    return out


def invisible_watermark(frames: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """dwtDct and dwtDctSvd with 64 bits, on the same frames and still attacks."""
    try:
        from imwatermark import WatermarkDecoder, WatermarkEncoder
    except ImportError:
        return None
    import cv2

    bits = [int(b) for b in np.unpackbits(np.frombuffer(PAYLOAD.encode(), np.uint8))]
    out: dict[str, Any] = {}
    for method in ("dwtDct", "dwtDctSvd"):
        psnrs, ssims, embed_times = [], [], []
        per_attack: dict[str, list[tuple[bool, float]]] = {attack: [] for attack in STILL_ATTACKS}
        for image in frames.values():
            encoder = WatermarkEncoder()
            encoder.set_watermark("bits", bits)
            start = time.perf_counter()
            marked_bgr = encoder.encode(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), method)
            embed_times.append(time.perf_counter() - start)
            marked = cv2.cvtColor(marked_bgr, cv2.COLOR_BGR2RGB)
            psnrs.append(float(10 * np.log10(255**2 / max(np.mean((marked.astype(float) - image) ** 2), 1e-12))))
            ssims.append(ssim_luma(marked, image))
            for attack, apply in STILL_ATTACKS.items():
                decoder = WatermarkDecoder("bits", 64)
                attacked = apply(marked)
                got = decoder.decode(cv2.cvtColor(attacked, cv2.COLOR_RGB2BGR), method)
                accuracy = float(np.mean(np.array(got, dtype=int) == np.array(bits)))
                per_attack[attack].append((accuracy == 1.0, accuracy))
        out[method] = {
            "psnr_db_min": round(min(psnrs), 3), "psnr_db_mean": round(float(np.mean(psnrs)), 3),
            "ssim_mean": round(float(np.mean(ssims)), 5), "embed_s_mean": round(float(np.mean(embed_times)), 4),
            "attacks": {attack: {"recovered_fraction": round(float(np.mean([r for r, _ in rows])), 4),
                                 "bit_accuracy": round(float(np.mean([a for _, a in rows])), 4)}
                        for attack, rows in per_attack.items()}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "watermark.json")
    parser.add_argument("--clips", type=int, default=6, help="frames turned into 24-frame clips per video attack")
    parser.add_argument("--keys", type=int, default=200, help="keys each unmarked input is read with")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    begin = time.perf_counter()
    frames = content()
    with ProcessPoolExecutor(args.workers) as pool:
        stills = list(pool.map(still_job, frames.items()))
        print(f"stills done at {time.perf_counter() - begin:.0f} s", flush=True)
        clips = [(name, frames[name], attack) for attack in VIDEO_ATTACKS for name in list(frames)[:args.clips]]
        videos = list(pool.map(video_job, clips))
        print(f"videos done at {time.perf_counter() - begin:.0f} s", flush=True)
        negatives = list(pool.map(false_positive_job, [(n, i, args.keys) for n, i in unmarked_inputs(frames)]))
        print(f"false positives done at {time.perf_counter() - begin:.0f} s", flush=True)
    others = invisible_watermark(frames)
    attacks: dict[str, Any] = {}
    for attack in STILL_ATTACKS:
        rows = [row["attacks"][attack] for row in stills]
        attacks[attack] = {"kind": "still", "inputs": len(rows),
                           "recovered_fraction": round(float(np.mean([r["recovered"] for r in rows])), 4),
                           "bit_accuracy": round(float(np.mean([r["bit_accuracy"] for r in rows])), 4),
                           "missed": [row["frame"] for row in stills if not row["attacks"][attack]["recovered"]]}
    for attack in VIDEO_ATTACKS:
        rows = [v for v in videos if v["attack"] == attack]
        attacks[attack] = {"kind": "video, 24-frame clips", "inputs": len(rows),
                           "recovered_fraction": round(float(np.mean([r["recovered"] for r in rows])), 4),
                           "bit_accuracy": round(float(np.mean([r["bit_accuracy"] for r in rows])), 4),
                           "missed": [r["clip"] for r in rows if not r["recovered"]]}
    gradient = next(row for row in stills if row["frame"] == "gradient")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
                  f"{torch.__version__}, numpy {np.__version__}",
        "command": "python benchmarks/watermark.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "frames": len(stills), "size": [WIDTH, HEIGHT], "payload_bits": 64, "p_threshold": P_THRESHOLD,
        "psnr_db_min": min(row["psnr_db"] for row in stills),
        "psnr_db_mean": round(float(np.mean([row["psnr_db"] for row in stills])), 3),
        "ssim_mean": round(float(np.mean([row["ssim"] for row in stills])), 5),
        "ssim_min": min(row["ssim"] for row in stills),
        "gradient_max_change": gradient["max_change"], "gradient_psnr_db": gradient["psnr_db"],
        "embed_s_cpu_1core_mean": round(float(np.mean([row["embed_s_cpu_1core"] for row in stills])), 4),
        "detect_s_still_mean": round(float(np.mean([a["detect_s"] for row in stills
                                                    for a in row["attacks"].values()])), 3),
        "unmarked_inputs": sum(n["keys"] for n in negatives),
        "unmarked_pictures": len(negatives),
        "false_positives": sum(n["found"] for n in negatives),
        "smallest_unmarked_p": min(n["smallest_p"] for n in negatives),
        "attacks": attacks,
        "invisible_watermark": others,
        "per_frame": stills, "per_clip": videos,
        "wall_s": round(time.perf_counter() - begin, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    summary = {k: v for k, v in result.items() if k not in ("per_frame", "per_clip", "attacks", "invisible_watermark")}
    print(json.dumps(summary, indent=1))
    for attack, row in attacks.items():
        print(f"{attack:28s} recovered {row['recovered_fraction']:.3f}  bits {row['bit_accuracy']:.4f}  "
              f"missed {row['missed']}")


if __name__ == "__main__":
    main()
