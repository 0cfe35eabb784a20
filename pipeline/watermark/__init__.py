"""The invisible watermark: a keyed payload embedded in every frame, and its detector."""
