"""GPU time of the watermark embed at 4K (issue 18): target under 2 % of a frame's decode
(0.31 s for the SD-class VAE on an H200, so under 6 ms).

    python benchmarks/watermark_gpu.py --out benchmarks/results/watermark_gpu.json

Times, with CUDA events on the pipeline's own watermark stream (lowest priority, nothing
else running), `embed` on 3840x2160 frames in each pixel type a run can carry (uint8 for
PNG/MP4, uint16 for 16-bit PNG, float16 for EXR), and the one-off pattern build; then
reads a marked uint8 frame back on the CPU to check the mark is there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from pipeline.config.job import Watermark
from pipeline.gpu.device import DeviceContext
from pipeline.stages.watermark import offsets_for
from pipeline.watermark.detect import detect
from pipeline.watermark.embed import embed

DECODE_S = 0.31   # one 4K SD-class decode on an H200 (issue 18's yardstick)


def main() -> None:
    parser = argparse.ArgumentParser(description="watermark embed time at 4K on the GPU")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--width", type=int, default=3840)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    ctx = DeviceContext(torch.device("cuda:0"))
    mark = Watermark(enabled=True, payload="bench", key="gpu-bench-key")
    start = time.perf_counter()
    offsets = offsets_for(mark, args.height, args.width, ctx)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    gen = torch.Generator(device=ctx.device).manual_seed(18)
    result: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__, "size": [args.width, args.height], "frames": args.frames,
        "pattern_build_s": round(build_s, 4), "decode_s_reference": DECODE_S, "embed": {}}
    for dtype in (torch.uint8, torch.uint16, torch.float16):
        top = {torch.uint8: 256, torch.uint16: 65536}.get(dtype)
        if top is None:
            base = torch.rand(args.height, args.width, 3, device=ctx.device, generator=gen).to(dtype)
        else:
            base = torch.randint(0, top, (args.height, args.width, 3), device=ctx.device, generator=gen,
                                 dtype=torch.int32).to(dtype)
        frames = [base.clone() for _ in range(4)]
        times = []
        with torch.no_grad(), ctx.on(ctx.watermark):
            for i in range(args.frames + 10):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record(ctx.watermark)
                embed(frames[i % 4], offsets)
                end.record(ctx.watermark)
                end.synchronize()
                if i >= 10:
                    times.append(begin.elapsed_time(end))
        median = statistics.median(times)
        result["embed"][str(dtype).removeprefix("torch.")] = {   # type: ignore[index]
            "ms_median": round(median, 4), "ms_p95": round(sorted(times)[int(0.95 * len(times))], 4),
            "share_of_decode": round(median / 1000 / DECODE_S, 5)}
    picture = torch.randint(0, 256, (args.height, args.width, 3), device=ctx.device, generator=gen,
                            dtype=torch.int32).to(torch.uint8)
    smooth = torch.nn.functional.avg_pool2d(picture.permute(2, 0, 1)[None].float(), 9, 1, 4)[0]
    picture = smooth.permute(1, 2, 0).round().to(torch.uint8).contiguous()
    embed(picture, offsets)
    found = detect(picture.cpu().numpy(), mark.key)
    result["read_back"] = {"found": found.found, "payload": found.payload, "p_value": found.p_value}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
