"""A tiny AutoencoderKLWan, saved and loaded like a user's: decoding it chunk by chunk
(pipeline.decode.video.chunks) gives exactly diffusers' whole-clip decode, with 1 frame from the
first latent frame and 4 from each later one."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.decode.video.chunks import decode_chunks, frames_for


def test_chunked_wan_decode_equals_whole_clip_decode(tmp_path: Path) -> None:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                     temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                     latents_std=[1.0] * 4).save_pretrained(tmp_path / "wan", safe_serialization=True)
    vae = AutoencoderKLWan.from_pretrained(tmp_path / "wan", low_cpu_mem_usage=False).eval()
    latents = torch.randn(1, 4, 5, 6, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = vae.decode(latents).sample
        chunks = list(decode_chunks(vae, latents))
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4, 4]
    assert whole.shape == (1, 3, frames_for(5, 4), 48, 64)
    assert torch.equal(torch.cat(chunks, dim=2), whole)
    with torch.no_grad():  # the cache is cleared between clips: a second clip decodes the same
        again = torch.cat(list(decode_chunks(vae, latents)), dim=2)
    assert torch.equal(again, whole)
