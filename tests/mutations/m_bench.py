"""Issue 18's reader checks (h18b): ADBC must keep NUMERIC exact at every scale before it may read
key ranges. A reader that lets a float stand between the server's text and the decimal column
must fail the exactness test."""

from __future__ import annotations

from tests.mutations import Mutation

MUTATIONS = [
    Mutation("adbc-numeric-through-float", "engine/connectors/postgres/copy_stream.py",
             "                col = col.cast(types[name])\n",
             "                col = col.cast(pa.float64(), safe=False).cast(types[name], safe=False)\n",
             ("tests/integration/test_pg_numeric_exact.py::test_numeric_is_exact_at_every_scale[adbc]",),
             "ADBC's NUMERIC text goes through float64 on its way to decimal128"),
]
