"""Settings of the report tests: the asserts of their shared helpers explain a failure as well."""

import pytest

# Assertion rewriting covers test modules only; this gives ``report_checks``' asserts the same detail.
pytest.register_assert_rewrite("report_checks")
