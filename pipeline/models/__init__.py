"""Loading models from local diffusers folders (safetensors only): VAEs and generation
pipelines, the caches that keep them loaded across runs, the dtype table, and CUDA
graphs for denoisers."""
