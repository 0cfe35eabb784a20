"""Files on disk: latent inputs (safetensors, .npy without pickle), frame formats
(PNG, EXR), the MP4, atomic publishing and the manifest that records every output."""
