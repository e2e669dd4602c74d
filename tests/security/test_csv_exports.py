"""The admin pages' CSV downloads, attacked with a formula: a user whose email and a template whose
name start like a spreadsheet formula come out of the usage report as text, never as a formula."""
import csv
import io
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.test_admin import _add_instance, _post, _slug, _template_form, admin  # noqa: F401 - a fixture

pytestmark = [pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)]


def test_the_usage_csv_never_hands_a_spreadsheet_a_formula(stack, admin):  # noqa: F811 - the fixture
    slug, formula = _slug("formula"), '=HYPERLINK("http://evil.example","x")'
    assert _post(stack, admin, "/admin/templates/new", **_template_form(slug, name=formula)).status_code == 303
    mallory = stack.create_user(email=f"+cmd-{slug}@example.org")
    now = datetime.now(timezone.utc)
    _add_instance(stack, slug, mallory, now - timedelta(hours=2), now - timedelta(hours=2), now - timedelta(hours=1))
    for by, wanted in (("user", f"'+cmd-{slug}@example.org"), ("template", f"'{formula} ({slug})")):
        answer = admin["browser"].get(f"{stack.base_url}/admin/usage.csv", params={"by": by}, timeout=10)
        assert answer.status_code == 200
        cells = [row[0] for row in csv.reader(io.StringIO(answer.text))]
        assert wanted in cells
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells)
