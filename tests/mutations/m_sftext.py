"""Salesforce text values with line ends (found while fixing issue 22's CSV item): each flip brings
the Arrow block fault back to one of the two page paths."""

from __future__ import annotations

from tests.mutations import Mutation

T = "tests/unit/test_sf_text_values.py::"
MUTATIONS = [
    Mutation("sf-rest-page-in-default-blocks", "engine/connectors/salesforce/source.py",
             "return pacsv.read_csv(buf, read_options=_one_block(size), parse_options=_QUOTED_NEWLINES,",
             "return pacsv.read_csv(buf,",
             (T + "test_a_rest_page_with_line_ends_in_values_survives_the_csv_round_trip",),
             "a REST page is parsed in Arrow's default blocks, without quoted line ends, again"),
    Mutation("sf-pages-in-16-mib-blocks", "engine/connectors/salesforce/source.py",
             "return pacsv.ReadOptions(block_size=max(1, min(size + 1, (1 << 31) - 1)))",
             "return pacsv.ReadOptions(block_size=1 << 24)",
             (T + "test_a_bulk_page_with_a_quoted_line_end_across_16_mib_parses_exactly",),
             "a Bulk page is cut into 16 MiB Arrow blocks again"),
]
