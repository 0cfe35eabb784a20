"""Generation (source kind "diffusers") end to end on the CPU: tiny StableDiffusion,
StableDiffusionXL and StableDiffusion3 pipelines made by the test and saved with save_pretrained, rendered
by the CLI through the project's own decode stage; determinism, a frame rendered alone,
the pipeline's own decode, and the jobs the planner refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    job_toml,
    make_flux_pipeline,
    make_sd3_pipeline,
    make_sd_pipeline,
    make_sdxl_pipeline,
    make_wan_pipeline,
    render,
)

from pipeline.config.job import Generation, PromptRange


@pytest.fixture(scope="session")
def sd_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sd_pipeline(tmp_path_factory.mktemp("pipelines") / "sd")


@pytest.fixture(scope="session")
def sdxl_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sdxl_pipeline(tmp_path_factory.mktemp("pipelines") / "sdxl")


@pytest.fixture(scope="session")
def flux_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_flux_pipeline(tmp_path_factory.mktemp("pipelines") / "flux")


@pytest.fixture(scope="session")
def sd3_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sd3_pipeline(tmp_path_factory.mktemp("pipelines") / "sd3")


def generation_job(tmp_path: Path, pipeline: Path, name: str = "job.toml", *, start: int = 1, end: int = 4,
                   root: str = "out", **source: object) -> Path:
    job = {
        "seed": 11,
        "shot": {"name": "gen", "frame_start": start, "frame_end": end, "fps": 24, "width": 48, "height": 32},
        "source": {"kind": "diffusers", "path": str(pipeline), "prompt": "a red cat",
                   "negative_prompt": "blurry", "steps": 2, "guidance_scale": 4.0, "batch_size": 2, **source},
        "model": {"dtype": "float32"},
        "output": {"root": str(tmp_path / root), "formats": ["png"]},
        "tuning": {"writer_threads": 2},
    }
    prompts = job["source"].pop("prompts", [])  # arrays of tables, written after the rest
    text = job_toml(job) + "".join(f"\n[[source.prompts]]\nframes = {p['frames']}\nprompt = {json.dumps(p['prompt'])}\n"
                                   for p in prompts)
    path = tmp_path / name
    path.write_text(text)
    return path


def frames(root: Path, numbers: range) -> list[np.ndarray]:
    from pipeline.files.png import read_png

    return [read_png(root / "gen" / f"gen.{n:04d}.png").astype(int) for n in numbers]


def test_sd_generates_deterministically_and_a_frame_alone_matches(tmp_path: Path, sd_pipeline: Path) -> None:
    job = generation_job(tmp_path, sd_pipeline)
    dry = render("run", str(job), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "StableDiffusionPipeline" in dry.stdout and "2 step(s)" in dry.stdout
    first = render("run", str(job))
    assert first.returncode == 0, first.stderr
    assert "generation:" in first.stdout
    again = render("run", str(generation_job(tmp_path, sd_pipeline, "again.toml", root="again")), "-q")
    assert again.returncode == 0, again.stderr
    whole, repeat = frames(tmp_path / "out", range(1, 5)), frames(tmp_path / "again", range(1, 5))
    for a, b in zip(whole, repeat, strict=True):
        assert np.array_equal(a, b), "the same job gave different frames"
    assert not np.array_equal(whole[0], whole[1]), "two frames with different seeds came out the same"
    alone = render("run", str(generation_job(tmp_path, sd_pipeline, "alone.toml", start=3, end=3, root="alone")),
                   "-q")
    assert alone.returncode == 0, alone.stderr
    # frame 3 shared a batch of 2 in the shot and was alone here: the same noise; the
    # batched UNet may round differently, by at most a level
    assert np.abs(frames(tmp_path / "alone", range(3, 4))[0] - whole[2]).max() <= 1
    assert render("verify", str(tmp_path / "out")).returncode == 0


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_frames_are_what_the_pipeline_itself_decodes(tmp_path: Path, family: str,
                                                     request: pytest.FixtureRequest) -> None:
    """The latents convention (SD: scaled; SD3: scaled and shifted, 16 channels; Flux:
    packed in 2x2 patches, scaled and shifted, no negative prompt): our
    decode of output_type="latent" equals diffusers' own decode (output_type="np") of
    the same call."""
    import diffusers

    from pipeline.config.seeds import frame_seed

    folder = request.getfixturevalue(f"{family}_pipeline")
    negative = None if family == "flux" else ["blurry"]
    job = generation_job(tmp_path, folder, start=2, end=2, batch_size=1, negative_prompt="" if negative is None
                         else negative[0])
    result = render("run", str(job), "-q")
    assert result.returncode == 0, result.stderr
    extra = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {}
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, use_safetensors=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(prompt=["a red cat"], negative_prompt=negative, num_inference_steps=2, guidance_scale=4.0,
                width=48, height=32, output_type="np",
                generator=[torch.Generator().manual_seed(frame_seed(11, 2))]).images[0]
    got = frames(tmp_path / "out", range(2, 3))[0]
    assert np.abs(got - np.round(want * 255)).max() <= 1


def test_sdxl_generates_with_prompt_overrides(tmp_path: Path, sdxl_pipeline: Path) -> None:
    job = generation_job(tmp_path, sdxl_pipeline, prompts=[{"frames": [3, 4], "prompt": "a blue dog"}],
                         scheduler="DDIMScheduler")
    result = render("run", str(job), "-q")
    assert result.returncode == 0, result.stderr
    plain = generation_job(tmp_path, sdxl_pipeline, "plain.toml", root="plain", scheduler="DDIMScheduler")
    assert render("run", str(plain), "-q").returncode == 0
    over, base = frames(tmp_path / "out", range(1, 5)), frames(tmp_path / "plain", range(1, 5))
    assert np.array_equal(over[0], base[0]) and np.array_equal(over[1], base[1])   # outside the override
    assert not np.array_equal(over[2], base[2])                                     # inside it
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len([r for r in records if r["kind"] == "frame"]) == 4


def test_batches_share_a_prompt_and_keep_order() -> None:
    from pipeline.models.generation import batches

    gen = Generation(prompt="a", negative_prompt="", steps=1, guidance_scale=1.0, scheduler=None, batch_size=3,
                     overrides=(PromptRange(4, 5, "b", None),))
    assert batches(gen, list(range(1, 9))) == [[1, 2, 3], [4, 5], [6, 7, 8]]
    assert gen.prompts_for(5) == ("b", "") and gen.prompts_for(6) == ("a", "")


@pytest.mark.parametrize(("change", "needles"), [
    ({"source": {"steps": 0}}, ["source.steps", "0"]),
    ({"source": {"prompt": None}}, ["source.prompt"]),
    ({"source": {"scheduler": "NoSuchScheduler"}}, ["source.scheduler", "NoSuchScheduler"]),
    ({"shot": {"width": 44}}, ["shot.width", "40 or 48"]),
    ({"index": {"_class_name": "FooPipeline"}}, ["source.path", "FooPipeline", "supported"]),
    ({"drop": "text_encoder"}, ["source.path", "'text_encoder'"]),
    ({"source": {"prompts": [{"frames": [3, 9], "prompt": "x"}]}}, ["source.prompts[0].frames", "1-4"]),
])
def test_bad_generation_jobs_are_refused(tmp_path: Path, sd_pipeline: Path, change: dict, needles: list[str]
                                         ) -> None:
    import shutil

    pipeline = tmp_path / "pipe"
    shutil.copytree(sd_pipeline, pipeline)
    if "index" in change:
        index = json.loads((pipeline / "model_index.json").read_text())
        (pipeline / "model_index.json").write_text(json.dumps(index | change["index"]))
    if "drop" in change:
        shutil.rmtree(pipeline / change["drop"])
    source = {k: v for k, v in change.get("source", {}).items() if v is not None}
    job = generation_job(tmp_path, pipeline, **source)
    if change.get("source", {}).get("prompt", "") is None or "shot" in change:
        text = job.read_text().replace('prompt = "a red cat"\n', "" if "source" in change else 'prompt = "a red cat"\n')
        if "shot" in change:
            text = text.replace("width = 48", f"width = {change['shot']['width']}")
        job.write_text(text)
    result = render("run", str(job))
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "out").exists()


def test_the_farm_generates_and_keeps_pipelines_inside_its_model_roots(tmp_path: Path, sd_pipeline: Path) -> None:
    """A worker loads the pipeline once for both tasks; a worker whose model roots do not
    hold the pipeline refuses the job, naming the field."""
    queue = f"sqlite:///{tmp_path / 'farm.db'}"
    job = generation_job(tmp_path, sd_pipeline)
    assert render("submit", str(job), "--queue", queue, "--chunk", "2").returncode == 0
    elsewhere = tmp_path / "no-models"
    elsewhere.mkdir()
    refused = render("worker", "--queue", queue, "--device", "cpu", "--output-root", str(tmp_path),
                     "--model-root", str(elsewhere), "--exit-when-idle", "--max-job-failures", "1")
    assert "source.path" in refused.stderr and "outside this worker's model roots" in refused.stderr
    queue2 = f"sqlite:///{tmp_path / 'farm2.db'}"
    assert render("submit", str(job), "--queue", queue2, "--chunk", "2").returncode == 0
    worker = render("worker", "--queue", queue2, "--device", "cpu", "--output-root", str(tmp_path),
                    "--model-root", str(sd_pipeline.parent), "--exit-when-idle")
    assert worker.returncode == 0, worker.stderr
    state = json.loads(render("status", "--queue", queue2, "--json").stdout)["jobs"][0]
    assert (state["done"], state["state"]) == (4, "done"), (state, worker.stderr)
    assert render("verify", str(tmp_path / "out")).returncode == 0


@pytest.fixture(scope="session")
def wan_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_wan_pipeline(tmp_path_factory.mktemp("pipelines") / "wan")


def test_wan_generates_a_clip_as_the_pipeline_decodes_it(tmp_path: Path, wan_pipeline: Path) -> None:
    """Text-to-video: one call makes the shot's 9 frames (3 latent frames), decoded chunk
    by chunk by our decode stage; against diffusers' own decode of the same call."""
    from diffusers import WanPipeline

    from pipeline.config.seeds import frame_seed

    job = generation_job(tmp_path, wan_pipeline, end=9, batch_size=1)
    job.write_text(job.read_text().replace("width = 48", "width = 64"))
    dry = render("run", str(job), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "WanPipeline" in dry.stdout and "a clip of 3 latent frame(s)" in dry.stdout
    result = render("run", str(job), "-q")
    assert result.returncode == 0, result.stderr
    pipe = WanPipeline.from_pretrained(wan_pipeline, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(prompt="a red cat", negative_prompt="blurry", num_inference_steps=2, guidance_scale=4.0, width=64,
                height=32, num_frames=9, output_type="np",
                generator=torch.Generator().manual_seed(frame_seed(11, 1))).frames[0]   # (9, 32, 64, 3)
    got = frames(tmp_path / "out", range(1, 10))
    for i in range(9):
        assert np.abs(got[i] - np.round(want[i] * 255)).max() <= 1, f"frame {i + 1}"


def test_wan_jobs_take_one_prompt_and_1_plus_4k_frames(tmp_path: Path, wan_pipeline: Path) -> None:
    for source, end, needle in (({"prompts": [{"frames": [1, 4], "prompt": "x"}]}, 9, "source.prompts"),
                                ({"batch_size": 2}, 9, "source.batch_size"), ({}, 8, "shot.frame_end")):
        job = generation_job(tmp_path, wan_pipeline, end=end, **({"batch_size": 1} | source))
        job.write_text(job.read_text().replace("width = 48", "width = 64"))
        result = render("run", str(job))
        assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_flux_refuses_a_negative_prompt(tmp_path: Path, flux_pipeline: Path) -> None:
    result = render("run", str(generation_job(tmp_path, flux_pipeline)))   # negative_prompt = "blurry"
    assert result.returncode == 2 and "source.negative_prompt" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
