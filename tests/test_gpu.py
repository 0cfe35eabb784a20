"""GPU paths: stream priorities, the pinned ring, event waits, and a CUDA render that
matches the CPU render. Marked `gpu`: skipped on machines without CUDA (CI), run on
the GPU machine before an issue touching them is resolved."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio
from helpers import clip_job, render

from pipeline.gpu.device import DeviceContext, pick_device

pytestmark = pytest.mark.gpu


def test_streams_have_the_documented_priorities() -> None:
    ctx = DeviceContext(torch.device("cuda:0"))
    lowest, highest = torch.cuda.Stream.priority_range()
    assert ctx.compute.priority == highest
    assert ctx.watermark.priority == lowest == 0
    assert len({ctx.compute.cuda_stream, ctx.copy.cuda_stream, ctx.watermark.cuda_stream}) == 3


def test_host_buffers_are_pinned_and_events_are_awaited() -> None:
    ctx = DeviceContext(pick_device(None))
    buffer = ctx.host_buffer((2160, 3840, 3))
    assert buffer.is_pinned()
    source = torch.randint(0, 255, (2160, 3840, 3), dtype=torch.uint8, device=ctx.device)

    async def copy() -> None:
        with ctx.on(ctx.copy):
            ctx.after(ctx.copy, ctx.record(ctx.compute))
            buffer.copy_(source, non_blocking=True)
            done = ctx.record(ctx.copy)
        await ctx.completed(done)

    trio.run(copy)
    assert torch.equal(buffer, source.cpu())


def render_on_cpu_and_cuda(write_job: Callable[..., Path], job_dir: Path, **overrides: Any) -> str:
    """The same job rendered into job_dir/cpu and job_dir/cuda; the CUDA run's summary."""
    for dev in ("cpu", "cuda"):
        output = {**overrides.get("output", {}), "root": str(job_dir / dev)}
        job = write_job(f"{dev}.toml", **{**overrides, "output": output})
        result = render("run", str(job), "--device", "cpu" if dev == "cpu" else "cuda:0", "-q")
        assert result.returncode == 0, result.stderr
    return result.stdout


def assert_frames_match(job_dir: Path, cpu: str, cuda: str, suffix: str, tolerance: float) -> None:
    from pipeline.files.formats import read_frame

    for frame in range(1, 7):
        name = f"test/test.{frame:04d}{suffix}"
        a = read_frame(job_dir / cpu / name).astype(float)
        b = read_frame(job_dir / cuda / name).astype(float)
        assert np.abs(a - b).max() <= tolerance, f"frame {frame}: CUDA and CPU differ by {np.abs(a - b).max()}"


def test_cuda_render_matches_cpu_render(write_job: Callable[..., Path], job_dir: Path) -> None:
    cpu = write_job("cpu.toml", output={"root": str(job_dir / "cpu"), "formats": ["png", "mp4"]},
                    watermark={"enabled": True})
    gpu = write_job("gpu.toml", output={"root": str(job_dir / "gpu"), "formats": ["png", "mp4"]},
                    watermark={"enabled": True})
    assert render("run", str(cpu), "--device", "cpu", "-q").returncode == 0
    result = render("run", str(gpu), "--device", "cuda:0", "-q")
    assert result.returncode == 0, result.stderr
    assert "cuda:0" in result.stdout
    assert_frames_match(job_dir, "cpu", "gpu", ".png", 2)
    assert render("verify", str(job_dir / "gpu")).returncode == 0
    # only the video left to write: it comes from the PNGs, with the GPU not held
    (job_dir / "gpu" / "test.mp4").unlink()
    result = render("run", str(gpu), "--device", "cuda:0", "--resume", "-q")
    assert result.returncode == 0, result.stderr
    manifest = (job_dir / "gpu" / "manifest.jsonl").read_text().splitlines()
    resumed = [r for r in map(json.loads, manifest) if r["kind"] == "run"][-1]
    assert resumed["device"].startswith("host") and resumed["gpu_s"] == 0.0 and resumed["load_s"] == 0, resumed
    assert render("verify", str(job_dir / "gpu")).returncode == 0


def test_demo_on_the_gpu(tmp_path: Path) -> None:
    """The README's main job on cuda:0, with its summary (the issue asks how fast)."""
    samples = Path(__file__).resolve().parent.parent / "samples"
    result = render("run", str(samples / "demo.toml"), "--device", "cuda:0", "--output-root", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "rendered 48 frame(s) of demo" in result.stdout and "cuda:0" in result.stdout
    assert render("verify", str(tmp_path)).returncode == 0


def test_priorities_are_configurable() -> None:
    ctx = DeviceContext(torch.device("cuda:0"), compute_priority="lowest", watermark_priority="highest")
    lowest, highest = torch.cuda.Stream.priority_range()
    assert ctx.compute.priority == lowest and ctx.watermark.priority == highest


def test_busy_clock_sees_a_fed_stream_busy_and_a_starved_one_idle() -> None:
    import time

    from pipeline.gpu.busy import BusyClock

    ctx = DeviceContext(torch.device("cuda:0"))
    x = torch.randn(4096, 4096, device=ctx.device)
    fed, starved = BusyClock(), BusyClock()
    with ctx.on(ctx.compute):
        for _ in range(20):
            begin = fed.start(ctx.compute)
            x = (x @ x).tanh_()
            fed.stop(ctx.compute, begin)
        ctx.compute.synchronize()
        for _ in range(5):
            begin = starved.start(ctx.compute)
            x = (x @ x).tanh_()
            starved.stop(ctx.compute, begin)
            ctx.compute.synchronize()
            time.sleep(0.05)  # the host does not feed the stream meanwhile
    assert fed.statistics()["gpu_busy_fraction"] > 0.95
    assert starved.statistics()["gpu_busy_fraction"] < 0.5


@pytest.mark.parametrize("fmt", ["png16", "exr"])
def test_cuda_deep_frames_match_cpu(fmt: str, write_job: Callable[..., Path], job_dir: Path) -> None:
    """uint16 and float16 quantisation, the watermark at those depths and the pinned ring
    of that dtype, on the GPU, against the same job on the CPU."""
    render_on_cpu_and_cuda(write_job, job_dir, output={"formats": [fmt, "mp4"]}, watermark={"enabled": True})
    step = 1 / 255 if fmt == "exr" else 257  # one 8-bit step at this depth
    assert_frames_match(job_dir, "cpu", "cuda", ".exr" if fmt == "exr" else ".png", 2 * step)
    assert render("verify", str(job_dir / "cuda")).returncode == 0


def test_cuda_tiled_decode_matches_cpu_tiled_decode(write_job: Callable[..., Path], job_dir: Path) -> None:
    """decode = "tiles" on the GPU (split decoder, GroupNorm statistics, blending on the
    device) against the same job on the CPU."""
    tuning = {"writer_threads": 2, "decode": "tiles", "tile_size": 8, "tile_overlap": 3, "vram_budget_gib": 0.01}
    summary = render_on_cpu_and_cuda(write_job, job_dir, output={"formats": ["png"]}, tuning=tuning)
    assert "batch(es) of tiles" in summary
    assert_frames_match(job_dir, "cpu", "cuda", ".png", 2)


def test_chunked_attention_matches_fused_attention_on_cuda() -> None:
    """bf16 on the GPU, one 512-channel head (the SD VAE's mid block) over 8,192 cells,
    in 4 chunks: against PyTorch's memory-efficient kernel."""
    from pipeline.kernels.attention import chunked_attention

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 1, 8192, 512, device="cuda", generator=gen, dtype=torch.bfloat16)
               for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q * 4, k, v).float()
    got = chunked_attention(q * 4, k, v, chunk_bytes=4 * 8192 * 2048).float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_fused_softmax_matches_eager_softmax() -> None:
    """The Triton kernel behind the chunked attention: rows longer than its block and
    not a multiple of it, a row with -inf entries, bf16 out."""
    from pipeline.kernels import softmax as fused

    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(37, 5000, device="cuda", generator=gen) * 8
    logits[3, :4000] = float("-inf")
    want = torch.softmax(logits * 0.125, dim=-1).to(torch.bfloat16)
    got = fused.scaled_softmax(logits.clone(), 0.125, torch.bfloat16)
    assert not fused._broken, fused._broken
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-6)
    assert torch.allclose(got.float().sum(-1), torch.ones(37, device="cuda"), atol=1e-2)


def test_fast_group_norm_on_cuda_matches_float32_group_norm() -> None:
    """bf16 on the GPU, a 4K-sized group (the case PyTorch's kernel is slow for):
    as close to a float32 GroupNorm as PyTorch's own bf16 GroupNorm is."""
    from pipeline.kernels.group_norm import use_fast_group_norm

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(1, 64, 540, 960, device="cuda", generator=gen) * 2 + 0.5)
    layer = torch.nn.GroupNorm(32, 64).cuda()
    want = layer(x)
    layer.bfloat16()
    native = layer(x.bfloat16()).float()
    use_fast_group_norm(torch.nn.Sequential(layer))
    fast = layer(x.bfloat16()).float()
    assert (fast - want).abs().max() <= max(1.5 * (native - want).abs().max().item(), 0.02)


@pytest.mark.parametrize("tuning", [{}, {"decode": "tiles", "tile_size": 8, "tile_overlap": 4,
                                     "vram_budget_gib": 0.01}], ids=["whole", "tiles"])
def test_cuda_clip_render_matches_cpu(tmp_path: Path, wan_vae: Path, tuning: dict) -> None:
    """A video VAE's clip job (chunked decode, denormalised latents, a chunk's frames
    sent on together; tiled: every batch of tiles with its own cache, blended on the
    device) on the GPU against the same job on the CPU."""
    from pipeline.files.formats import read_frame

    for dev in ("cpu", "cuda"):
        job = clip_job(tmp_path, wan_vae, name=f"{dev}.toml", tuning=tuning,
                       shot={"frame_end": 9, "width": 160, "height": 96}, source={"kind": "noise"},
                       output={"root": str(tmp_path / dev), "formats": ["png", "mp4"]})
        result = render("run", str(job), "--device", "cpu" if dev == "cpu" else "cuda:0", "-q")
        assert result.returncode == 0, result.stderr
    for frame in range(1, 10):
        name = f"test/test.{frame:04d}.png"
        a, b = (read_frame(tmp_path / dev / name).astype(float) for dev in ("cpu", "cuda"))
        assert np.abs(a - b).max() <= 2, f"frame {frame}: CUDA and CPU differ by {np.abs(a - b).max()}"
    assert render("verify", str(tmp_path / "cuda")).returncode == 0


def test_cuda_generation_matches_cpu(tmp_path: Path) -> None:
    """A generation job (tiny StableDiffusion pipeline) on the GPU: generation on the
    compute stream, latents handed to decode on the device. The noise is drawn on the
    CPU, so the frames match the CPU render within the kernels' rounding."""
    from helpers import make_sd_pipeline
    from test_generate import frames, generation_job

    pipeline = make_sd_pipeline(tmp_path / "sd")
    for dev in ("cpu", "cuda"):
        job = generation_job(tmp_path, pipeline, f"{dev}.toml", root=dev)
        result = render("run", str(job), "--device", "cpu" if dev == "cpu" else "cuda:0", "-q")
        assert result.returncode == 0, result.stderr
    for a, b in zip(frames(tmp_path / "cpu", range(1, 5)), frames(tmp_path / "cuda", range(1, 5)), strict=True):
        assert np.abs(a - b).max() <= 3


def test_cuda_graph_replays_equal_eager_forwards() -> None:
    """Keyword and dict arguments, a changing timestep tensor, tuple outputs; a forward
    with a host sync falls back to eager without an error."""
    from pipeline.models.cuda_graphs import use_cuda_graphs

    class Denoiser(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(16, 16)

        def forward(self, x: torch.Tensor, t: torch.Tensor, *, extra: dict, return_dict: bool = True) -> Any:
            out = torch.relu(self.linear(x) * t + extra["bias"])
            return (out,) if not return_dict else {"sample": out}

    torch.manual_seed(0)
    module = Denoiser().cuda()
    eager = Denoiser().cuda()
    eager.load_state_dict(module.state_dict())
    graphed = use_cuda_graphs(module)
    assert graphed is not None
    with torch.no_grad():
        for step in range(5):
            x, bias = torch.randn(4, 16, device="cuda"), torch.randn(16, device="cuda")
            t = torch.tensor(1.0 + step, device="cuda")
            got = module(x, t, extra={"bias": bias}, return_dict=False)[0]
            want = eager(x, t, extra={"bias": bias}, return_dict=False)[0]
            assert torch.equal(got, want)
        assert graphed.captures == 1 and graphed.replays == 5
        assert torch.equal(module(x, t, extra={"bias": bias})["sample"], want)   # dict output: eager

    class Syncing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (x * float(x.sum().item()),)

    syncing = Syncing().cuda()
    syncing.register_buffer("unused", torch.zeros(1, device="cuda"))
    graphed = use_cuda_graphs(syncing)
    x = torch.ones(3, device="cuda")
    assert torch.equal(syncing(x)[0], torch.full((3,), 3.0, device="cuda"))
    assert graphed is not None and graphed.replays == 0


def test_generation_with_cuda_graphs_equals_eager(tmp_path: Path) -> None:
    """The tiny SD pipeline's UNet replayed from graphs: the same latents as eager."""
    from helpers import make_sd_pipeline
    from test_generate import generation_job

    from pipeline.config.job import load_job
    from pipeline.models.generation import generate_latents, load_pipeline
    from pipeline.plan import make_plan

    job = load_job(generation_job(tmp_path, make_sd_pipeline(tmp_path / "sd")))
    plan = make_plan(job, torch.device("cuda:0"))
    generation = job.source.generation
    assert plan.pipeline is not None and generation is not None
    latents = []
    for graphs in (False, True):
        pipe = load_pipeline(plan.pipeline, "float32", torch.device("cuda:0"), None, graphs)
        with torch.no_grad():
            latents.append([generate_latents(pipe, generation, [1, 2], [5, 6], 48, 32) for _ in range(2)])
    assert pipe.unet.forward.replays > 0
    for eager, graphed in zip(*latents, strict=True):
        assert torch.allclose(eager, graphed, atol=1e-5), (eager - graphed).abs().max()



def test_colour_lut_on_cuda_matches_the_cpu_and_ocio() -> None:
    """The [colour] transform as a run applies it: quantise_hwc on the device."""
    from pipeline.colour.ocio import bake, reference
    from pipeline.config.job import Colour
    from pipeline.decode.quantise import quantise_hwc

    colour = Colour("ocio://default", "sRGB Encoded Rec.709 (sRGB)", "ACEScg")
    lut = torch.from_numpy(bake(colour))
    image = torch.rand(3, 270, 480, generator=torch.Generator().manual_seed(0)) * 2 - 1
    on_cpu = quantise_hwc(image, torch.float16, lut).float()
    on_cuda = quantise_hwc(image.cuda(), torch.float16, lut.cuda()).float().cpu()
    assert torch.allclose(on_cuda, on_cpu, atol=1e-3)   # one half-float step near 1
    want = reference(colour, (image * 0.5 + 0.5).permute(1, 2, 0).numpy())
    assert np.abs(on_cuda.numpy() - want).max() <= 1.5e-3


def test_gpu_spans_of_a_trace_lie_within_their_host_spans(write_job: Callable[..., Path], job_dir: Path) -> None:
    """Each frame's decode on the GPU starts after the decode stage took the frame and
    ends before the transfer stage handed it on (the host clock, aligned once a run)."""
    import json

    trace_file = job_dir / "gpu.trace.json"
    result = render("run", str(write_job(output={"formats": ["png"]}, watermark={"enabled": True})),
                    "--device", "cuda:0", "-q", "--trace", str(trace_file))
    assert result.returncode == 0, result.stderr
    events = json.loads(trace_file.read_text())["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    spans: dict[tuple[str, str], dict] = {(names[(e["pid"], e["tid"])], e["name"]): e for e in events if e["ph"] == "X"}
    slack_us = 200   # the alignment: one event read at a synchronize
    for frame in range(1, 7):
        gpu = spans[("GPU compute stream (decode)", f"frame {frame}")]
        decode = spans[("decode", f"frame {frame}")]
        transfer = spans[("transfer", f"frame {frame}")]
        assert gpu["ts"] + slack_us >= decode["ts"], (gpu, decode)
        assert gpu["ts"] + gpu["dur"] <= transfer["ts"] + transfer["dur"] + slack_us, (gpu, transfer)
        mark = spans[("GPU watermark stream", f"frame {frame}")]
        assert mark["ts"] + slack_us >= gpu["ts"] + gpu["dur"]   # the mark waits for the decode on the GPU
        copy = spans[("GPU copy stream", f"frame {frame}")]
        assert copy["ts"] + slack_us >= mark["ts"] + mark["dur"]   # and the copy for the mark
