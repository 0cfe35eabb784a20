"""Patch-parallel decode: one frame or clip decoded by several processes together, one
per device, each holding a band of the latent's rows (the approach of xDiT's DistVAE
and of NVIDIA's Wan VAE decode). `devices` checks which devices a job's decode_gpus
asks for, `rows` splits and exchanges rows through torch.distributed, `layers` makes a
decoder's layers see across a band's edges, `decode` runs a band and gathers the
frames, `group` starts the processes and drives them."""
