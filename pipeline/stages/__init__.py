"""One module per stage. Each stage is an async function over a receive and a send
channel (bounded), used with `async with`, so that closing cascades downstream and a
dead consumer stops its producer. `pipeline.run` wires them."""
