"""Every page at a phone's width (390 px) and a laptop's (1280 px), in a real Chromium, with axe-core.

On each page: no sideways scroll of the whole document, every button and link inside the
viewport (reachable without scrolling sideways), and no serious or critical violation that
axe-core (vendored in tests/browser/vendor, injected by the test only) reports. The screenshots
go to /tmp/berth-screens/widths for people to look at.
"""
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SCREENS
from tests.browser.test_browser import START, StatusGate, _sign_in
from tests.integration.test_launch import _host, _wait_state

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True),
]

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
WIDTHS = (390, 1280)

# axe-core's serious and critical violations on the page, each with a few of its elements.
RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.filter(v => v.impact === "serious" || v.impact === "critical")
    .map(v => `${v.impact} ${v.id}: ${v.help} at ${v.nodes.slice(0, 4).map(n => n.target.join(" ")).join(", ")}`);
}"""

# What a person at this width cannot reach: the document's own sideways scroll, and any visible
# control whose box pokes out of the viewport (a control inside its own scrolling box counts
# where it lies within that box's visible part only).
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const width = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth > width)
    problems.push(`the page is ${document.documentElement.scrollWidth} px wide in a ${width} px viewport`);
  for (const element of document.querySelectorAll("button, a.button, input, select, textarea, summary")) {
    const box = element.getBoundingClientRect();
    if (!element.checkVisibility() || element.closest(".visually-hidden, .skip-link")) continue;
    if (box.left < -1 || box.right > width + 1)
      problems.push(`${element.outerHTML.slice(0, 80)} spans ${Math.round(box.left)}..${Math.round(box.right)} px`);
  }
  return problems;
}"""


def _luminance(rgb):
    def channel(value):
        value /= 255
        return value / 12.92 if value <= 0.03928 else ((value + 0.055) / 1.055) ** 2.4
    red, green, blue = (channel(v) for v in rgb)
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast(first, second):
    light, dark = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _rgb(css_colour):
    """(r, g, b) of a computed colour such as "rgb(24, 100, 171)"."""
    return tuple(int(float(part)) for part in css_colour[css_colour.index("(") + 1:-1].split(",")[:3])


def _check(page, name, problems):
    """Screenshot page at both widths and add what is wrong with it to problems."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(50)  # one layout at the new width
        SCREENS.joinpath("widths").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENS / "widths" / f"{name}-{width}.png"), full_page=True)
        for problem in page.evaluate(LAYOUT_PROBLEMS) + page.evaluate(RUN_AXE):
            problems.append(f"{name} at {width} px: {problem}")


@pytest.fixture
def axe_context(chromium):
    """A browser context with axe-core in every page (an init script: the pages' CSP does not apply)."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    context.add_init_script(path=str(AXE))
    try:
        yield context
    finally:
        context.close()


def test_every_page_fits_both_widths_with_no_serious_accessibility_violation(stack, axe_context):
    admin = stack.create_user(email="ada.admin@example.org", is_admin=True)
    other = stack.create_user()
    problems = []
    page = axe_context.new_page()

    # Signed out: the sign-in page.
    page.goto(stack.base_url + "/auth/login")
    _check(page, "sign-in", problems)

    _sign_in(page, stack, admin)
    # A failed launch, and the starting page on its way there.
    gate = StatusGate(page)
    page.goto(stack.tool_url("broken", admin, "/"))
    gate.wait_held()
    _check(page, "starting", problems)
    gate.release()
    expect(page.get_by_role("heading", level=1)).to_have_text("Broken did not start", timeout=START)
    _check(page, "failed", problems)

    # A running tool, shared with someone, and one stopped, so the lists have rows in every state.
    with stack.login(admin) as browser:
        stack.open_tool(browser, "echo", admin)
    with stack.login(other) as browser:
        stack.open_tool(browser, "busybox", other)
    stopping = _host(stack, "busybox", other)
    page.goto(stack.base_url + "/sharing/echo")
    page.get_by_label("Email or group name").fill(other["email"])
    page.get_by_role("button", name="Share").click()
    _check(page, "sharing", problems)
    page.goto(stack.base_url + "/")
    _check(page, "catalogue", problems)

    # Account, with a token just made (shown once) and a second session.
    stack.login(admin).close()
    page.goto(stack.base_url + "/account")
    page.get_by_label("Name").fill("a laptop script with a long name")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#new-token")).to_be_visible()
    _check(page, "account", problems)

    page.goto(stack.base_url + f"/admin/instances?user={other['email']}")
    page.get_by_role("button", name=f"Stop Busybox of {other['email']}").click()
    _check(page, "admin-stop-confirm", problems)
    page.get_by_role("button", name="Yes, stop it").click()
    _wait_state(stack, stopping, ("STOPPED",))
    page.goto(stack.base_url + "/admin/groups")
    page.get_by_label("Name").fill("look-analysts")
    page.get_by_role("button", name="Create group").click()
    group_id = stack.query("SELECT id FROM groups WHERE name = 'look-analysts'")[0]["id"]
    instance_id = stack.instances(_host(stack, "broken", admin))[0]["id"]
    template_id = stack.query("SELECT id FROM tool_templates WHERE slug = 'echo'")[0]["id"]
    for path, name in (("/admin/users", "admin-users"), (f"/admin/users/{other['id']}", "admin-user"),
                       ("/admin/groups", "admin-groups"), (f"/admin/groups/{group_id}", "admin-group"),
                       ("/admin/templates", "admin-templates"), ("/admin/templates/new", "admin-template-new"),
                       (f"/admin/templates/{template_id}", "admin-template-edit"),
                       ("/admin/instances", "admin-instances"), (f"/admin/instances/{instance_id}", "admin-instance"),
                       ("/admin/usage", "admin-usage"), ("/admin/audit", "admin-audit")):
        page.goto(stack.base_url + path)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        _check(page, name, problems)

    # Add user: its errors, then the temporary password shown once.
    page.goto(stack.base_url + "/admin/users/new")
    page.get_by_label("Email").fill("not an address")
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("alert")).to_contain_text("Nothing was saved.")
    _check(page, "admin-add-user-errors", problems)
    page.get_by_label("Email").fill("grace.hopper.with.a.rather.long.address@example.org")
    page.get_by_label("Password").fill("")
    page.get_by_label("look-analysts", exact=True).check()
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("added")
    _check(page, "admin-user-added", problems)

    page.goto(stack.base_url + "/auth/logout")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign out")
    _check(page, "sign-out", problems)

    # A page that says no: a user who is not an administrator, on the admin pages.
    refused = axe_context.new_page()
    axe_context.clear_cookies()
    _sign_in(refused, stack, other)
    refused.goto(stack.base_url + "/admin/users")
    expect(refused.get_by_role("heading", level=1)).to_have_text("No access")
    _check(refused, "no-access", problems)

    assert not problems, "\n".join(problems)


def test_keyboard_focus_is_visible_at_three_to_one(stack, page):
    user = stack.create_user()
    _sign_in(page, stack, user)
    page.keyboard.press("Tab")
    focused = page.locator(":focus")
    expect(focused).to_have_text("Skip to content")
    page.keyboard.press("Tab")  # the brand link, on the white top bar
    outline_style, outline_width, outline_colour, bar, paper = page.locator(":focus").evaluate(
        """element => { const s = getComputedStyle(element);
             return [s.outlineStyle, s.outlineWidth, s.outlineColor,
                     getComputedStyle(element.closest("header")).backgroundColor,
                     getComputedStyle(document.documentElement).backgroundColor]; }""")
    assert outline_style == "solid" and float(outline_width.rstrip("px")) >= 2
    for background in (bar, paper):
        assert contrast(_rgb(outline_colour), _rgb(background)) >= 3, (outline_colour, background)
