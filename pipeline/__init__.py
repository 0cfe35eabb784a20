"""framefarm core: job model, planning, the staged trio pipeline and its GPU context.

Front ends (the `render` CLI in `pipeline.cli`, the farm in `workers/`) build on this
package; nothing in it imports them.
"""

__version__ = "0.1.0"
