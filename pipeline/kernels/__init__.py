"""The same mathematics as diffusers' slowest steps, faster: whole-frame attention,
GroupNorm, the fused softmax and the Wan decoder's memory-bound steps. `install`
puts them into a loaded model. Each has a test against the step it replaces; a reader
of the pipeline can skip this folder."""
