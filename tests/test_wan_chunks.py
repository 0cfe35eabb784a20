"""A tiny AutoencoderKLWan, saved and loaded like a user's: decoding it chunk by chunk
(pipeline.wan_chunks) gives exactly diffusers' whole-clip decode, with 1 frame from the
first latent frame and 4 from each later one."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.wan_chunks import ClipDecoder, decode_chunks, frame_wise_from, frames_for


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


def test_the_last_latent_frame_decoded_frame_by_frame_is_the_same(tmp_path: Path) -> None:
    """`step_frames` (the clip's last latent frame, each pixel frame queued on its own)
    computes what `step` does: the up blocks after the last temporal upsampling read the
    frames before from the cache."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[False, True, True]).eval()
    assert frame_wise_from(vae.decoder) == 2            # up blocks 0 and 1 double the frames
    assert frame_wise_from(AutoencoderKLWan().decoder) == 2   # Wan 2.1's own config
    latents = torch.randn(1, 4, 3, 6, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = list(decode_chunks(vae, latents))
        clip = ClipDecoder(vae)
        clip.step(latents[:, :, 0:1], first=True)
        clip.step(latents[:, :, 1:2], first=False)
        frames = list(clip.step_frames(latents[:, :, 2:3]))
    assert [f.shape for f in frames] == [(1, 3, 1, 48, 64)] * 4
    torch.testing.assert_close(torch.cat(frames, dim=2), whole[-1], rtol=0, atol=1e-6)
    assert not torch.equal(frames[0], frames[1])        # four different frames, not one repeated
