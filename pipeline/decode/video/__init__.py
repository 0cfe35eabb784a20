"""Video VAEs (Wan): a clip decoded one latent frame at a time with its causal cache,
whole or in tiles."""
