"""Colour transforms a job names (`[colour]`): OpenColorIO bakes them into a 3D LUT once
per run (`ocio`), the GPU applies it to every frame before quantisation (`lut`)."""
