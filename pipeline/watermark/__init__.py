"""The invisible watermark: a keyed payload embedded in every frame, and its detector.

    code      payload text <-> 128 BCH-protected bits, soft (Chase) decoding
    layout    the key's secret: which spatial frequencies carry which bit, their phases
    pattern   the periodic 256x256 tile, built once per run and tiled over the frame
    embed     per frame: the tile scaled by local activity (masking), added to luma
    detect    scale and offset found blind, tiles folded, bits read, a p-value
"""
