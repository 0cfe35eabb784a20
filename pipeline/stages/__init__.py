"""One module per stage, all of one shape: `stage(..., stats, rx, tx)` reads items from
`rx` (a bounded trio channel; None for the first stage), sends results into `tx`
(None for the last), counts its time in `stats`, and uses both channels with
`async with`, so that closing cascades downstream and a dead consumer stops its
producer. No stage imports another; `pipeline.run` wires them."""
