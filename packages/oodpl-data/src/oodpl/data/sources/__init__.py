"""One module per upstream data source; :mod:`oodpl.data.registry` finds them by name.

Each module reads the layout its source publishes (plain, gzipped, JSON, JSON lines or parquet)
and defines ``SPEC``, a :class:`~oodpl.data.sources._common.SourceSpec`. This package imports
none of them itself, so ``oodpl.data.records`` can use the dialogue helpers without a cycle.
"""

SOURCE_MODULES = (
    "amazon",
    "csg_pairs",
    "shp",
    "hh_rlhf",
    "oasst1",
    "webgpt",
    "summarize",
    "ultrafeedback",
    "chatbot_arena",
    "nectar",
    "trl",
)
