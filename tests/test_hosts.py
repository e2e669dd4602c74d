"""Tool addresses and the post-login redirect: berth/hosts.py, with no services running."""
import pytest

from berth.hosts import (MAX_ADDRESS_NAME_LENGTH, MAX_LABEL_LENGTH, MAX_SLUG_LENGTH, ToolHost, address_name_base,
                         address_name_candidates, address_name_problem, is_main_host, legacy_tool_host,
                         parse_tool_host, public_url, safe_next_url, safe_relative_path, session_cookie_name,
                         slug_problem, tool_cookie_name, tool_host, tools_domain)
from berth.settings import SettingError, load_settings

DOMAIN = "berth.localhost"
HOME = "http://berth.localhost:8080/"
CONFIG = {"BERTH_DOMAIN": DOMAIN, "BERTH_SCHEME": "http", "BERTH_HTTP_PORT": 8080}


# -- parse_tool_host --------------------------------------------------------------------

@pytest.mark.parametrize("host, slug, host_key", [
    ("echo-0a1b2c3d.berth.localhost", "echo", "0a1b2c3d"),
    ("jupyterlab-deadbeef.berth.localhost", "jupyterlab", "deadbeef"),
    ("my-dash-app-12345678.berth.localhost", "my-dash-app", "12345678"),
    ("r2-abcdef01.berth.localhost", "r2", "abcdef01"),
])
def test_parse_tool_host_reads_slug_and_host_key_of_a_legacy_address(host, slug, host_key):
    parsed = parse_tool_host(host, DOMAIN)
    assert parsed == ToolHost(slug=slug, host_key=host_key) and parsed.kind == "legacy" and not parsed.shared


@pytest.mark.parametrize("host, slug, address_name", [
    ("echo--alice.berth.localhost", "echo", "alice"),
    ("jupyterlab--jane-smith.berth.localhost:8080", "jupyterlab", "jane-smith"),
    ("my-dash-app--bob-2.berth.localhost", "my-dash-app", "bob-2"),
    ("echo--0a1b2c3d.berth.localhost", "echo", "0a1b2c3d"),           # a name that looks like a host key
    ("echo--x-0a1b2c3d.berth.localhost", "echo", "x-0a1b2c3d"),       # one that ends like a legacy address
    ("ECHO--Alice.Berth.Localhost", "echo", "alice"),
    ("e--1.berth.localhost", "e", "1"),
])
def test_parse_tool_host_reads_slug_and_address_name(host, slug, address_name):
    parsed = parse_tool_host(host, DOMAIN)
    assert parsed == ToolHost(slug=slug, address_name=address_name)
    assert parsed.kind == "personal" and not parsed.legacy and not parsed.shared


@pytest.mark.parametrize("host", [
    "echo---alice.berth.localhost",        # the name would start with a hyphen
    "echo--alice-.berth.localhost",        # ... or end with one
    "echo--ali--ce.berth.localhost",       # two separators
    "echo--.berth.localhost",              # no name
    "--alice.berth.localhost",             # no slug
    "1echo--alice.berth.localhost",        # not a slug
    "echo--al_ice.berth.localhost",
    "echo--alicé.berth.localhost",
    "echo--" + "a" * (MAX_LABEL_LENGTH - 5) + ".berth.localhost",  # longer than a DNS label
])
def test_parse_tool_host_refuses_bad_personal_addresses(host):
    assert parse_tool_host(host, DOMAIN) is None


@pytest.mark.parametrize("host", [
    "echo-0a1b2c3d.berth.localhost:8080",
    "echo-0a1b2c3d.berth.localhost:80",
    "  echo-0a1b2c3d.berth.localhost:8080  ",
])
def test_parse_tool_host_ignores_the_port(host):
    assert parse_tool_host(host, DOMAIN) == ToolHost("echo", "0a1b2c3d")


@pytest.mark.parametrize("host", [
    "ECHO-0A1B2C3D.BERTH.LOCALHOST",
    "Echo-0a1B2c3D.Berth.Localhost:8080",
])
def test_parse_tool_host_is_case_insensitive(host):
    assert parse_tool_host(host, DOMAIN) == ToolHost("echo", "0a1b2c3d")


@pytest.mark.parametrize("host", [
    "1echo-0a1b2c3d.berth.localhost",      # slug starts with a digit
    "-echo-0a1b2c3d.berth.localhost",      # slug starts with a hyphen
    "echo---0a1b2c3d.berth.localhost",     # triple hyphen
    "ec_ho-0a1b2c3d.berth.localhost",      # underscore
    "ech%6f-0a1b2c3d.berth.localhost",     # percent-encoding
    "-0a1b2c3d.berth.localhost",           # empty slug
    "échо-0a1b2c3d.berth.localhost",       # non-ASCII (Cyrillic o)
])
def test_parse_tool_host_refuses_bad_slugs(host):
    assert parse_tool_host(host, DOMAIN) is None


@pytest.mark.parametrize("host", [
    "echo-.berth.localhost",               # empty host key
    "echo-0a1b 2c3.berth.localhost",       # space
])
def test_parse_tool_host_refuses_bad_host_keys(host):
    assert parse_tool_host(host, DOMAIN) is None


@pytest.mark.parametrize("host, slug", [
    ("echo.berth.localhost", "echo"),                       # no host key: the shared tool
    ("team-dashboard.berth.localhost:8080", "team-dashboard"),
    ("echo-0a1b2c3.berth.localhost", "echo-0a1b2c3"),       # 7 characters: no host key
    ("echo-0a1b2c3d4.berth.localhost", "echo-0a1b2c3d4"),   # 9 characters
    ("echo-0a1b2c3g.berth.localhost", "echo-0a1b2c3g"),     # not hexadecimal
])
def test_parse_tool_host_reads_shared_tool_addresses(host, slug):
    parsed = parse_tool_host(host, DOMAIN)
    assert parsed == ToolHost(slug=slug, host_key=None) and parsed.shared and parsed.kind == "shared"


@pytest.mark.parametrize("slug, problem", [
    ("echo", None),
    ("team-dashboard", None),
    ("echo-0a1b2c3", None),
    ("echo-0a1b2c3d", "8 hexadecimal"),     # would read as a personal address
    ("Echo", "a-z"),
    ("echo--x", "single hyphens"),
    ("a" * MAX_SLUG_LENGTH, None),
    ("a" * (MAX_SLUG_LENGTH + 1), "at most"),
    ("xn", "xn"),                           # xn--<name> reads as punycode
    ("xn-tool", None),
])
def test_slug_problem(slug, problem):
    found = slug_problem(slug)
    assert found is None if problem is None else problem in found


@pytest.mark.parametrize("host", ["berth.localhost", "berth.localhost:8080", "BERTH.LOCALHOST"])
def test_parse_tool_host_refuses_the_main_host(host):
    assert parse_tool_host(host, DOMAIN) is None
    assert is_main_host(host, DOMAIN)


@pytest.mark.parametrize("host", [
    "a.echo-0a1b2c3d.berth.localhost",
    "echo-0a1b2c3d.x.berth.localhost",
    "echo-0a1b2c3d..berth.localhost",
])
def test_parse_tool_host_refuses_nested_subdomains(host):
    assert parse_tool_host(host, DOMAIN) is None


@pytest.mark.parametrize("host", [
    "echo-0a1b2c3d.example.com",
    "echo-0a1b2c3d.berth.localhost.evil.com",
    "echo-0a1b2c3d.evilberth.localhost",
    "echo-0a1b2c3d.localhost",
    "echo-0a1b2c3d.berth.localhost.",       # trailing dot: not the name we serve
    "evilberth.localhost",
    "echo-0a1b2c3devilberth.localhost",
    "",
    None,
])
def test_parse_tool_host_refuses_other_domains(host):
    assert parse_tool_host(host, DOMAIN) is None


def test_evilberth_localhost_is_not_the_main_host():
    assert not is_main_host("evilberth.localhost", DOMAIN)
    assert not is_main_host("berth.localhost.evil.com", DOMAIN)


def test_tool_host_round_trips_through_parse_tool_host():
    host = tool_host("my-tool", "jane-smith", DOMAIN)
    assert host == "my-tool--jane-smith.berth.localhost"
    assert parse_tool_host(host, DOMAIN) == ToolHost("my-tool", address_name="jane-smith")
    assert tool_host("my-tool", None, DOMAIN) == "my-tool.berth.localhost"


def test_legacy_tool_host_round_trips_through_parse_tool_host():
    host = legacy_tool_host("my-tool", "0a1b2c3d", DOMAIN)
    assert host == "my-tool-0a1b2c3d.berth.localhost"
    assert parse_tool_host(host, DOMAIN) == ToolHost("my-tool", "0a1b2c3d")


def test_the_longest_slug_and_name_fit_one_dns_label():
    label = tool_host("a" * MAX_SLUG_LENGTH, "b" * MAX_ADDRESS_NAME_LENGTH, DOMAIN).split(".")[0]
    assert len(label) == MAX_LABEL_LENGTH == 63
    assert parse_tool_host(label + "." + DOMAIN, DOMAIN).address_name == "b" * MAX_ADDRESS_NAME_LENGTH


# -- address names ----------------------------------------------------------------------

@pytest.mark.parametrize("email, name, base", [
    ("jane.smith@example.org", "Jane Smith", "jane-smith"),
    ("Jane_Smith+berth@example.org", "", "jane-smith"),      # case, underscore and a +tag
    ("j..--__x@example.org", "", "j-x"),                     # runs of anything else: one hyphen
    ("-jane-@example.org", "", "jane"),
    ("zoë.brontë@example.org", "", "zoe-bronte"),           # accents dropped
    ("ａｌｉｃｅ@example.org", "", "alice"),                  # full-width letters: the same name
    ("李雷@example.org", "Li Lei", "li-lei"),                 # nothing readable left: the name
    ("李雷@example.org", "李雷", "user"),                     # nor there: "user"
    ("+@example.org", "", "user"),
    ("x--y@example.org", "", "x-y"),                         # never a double hyphen
    ("abcdef12@example.org", "", "abcdef12"),
    ("a" * 80 + "@example.org", "", "a" * MAX_ADDRESS_NAME_LENGTH),
    ("a" * (MAX_ADDRESS_NAME_LENGTH - 1) + ".b@example.org", "", "a" * (MAX_ADDRESS_NAME_LENGTH - 1)),
])
def test_address_name_base(email, name, base):
    assert address_name_base(email, name) == base
    assert address_name_problem(base) is None


def test_address_name_candidates_add_a_number_and_stay_short_enough():
    assert [name for name, _ in zip(address_name_candidates("alice"), range(3))] == ["alice", "alice-2", "alice-3"]
    long = "a" * MAX_ADDRESS_NAME_LENGTH
    candidates = address_name_candidates(long)
    assert next(candidates) == long
    assert next(candidates) == "a" * (MAX_ADDRESS_NAME_LENGTH - 2) + "-2"
    shortened = address_name_candidates("a" * (MAX_ADDRESS_NAME_LENGTH - 2) + "-b")
    next(shortened)
    assert next(shortened) == "a" * (MAX_ADDRESS_NAME_LENGTH - 2) + "-2"  # no "--" where the cut fell
    for name, _ in zip(address_name_candidates(long), range(200)):
        assert address_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "-a", "a-", "a--b", "A", "a_b", "é", "a" * (MAX_ADDRESS_NAME_LENGTH + 1)])
def test_address_name_problem_refuses_bad_names(name):
    assert address_name_problem(name) is not None


# -- public_url -------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, port, expected", [
    ("http", 80, "http://berth.localhost/"),
    ("https", 443, "https://berth.localhost/"),
    ("http", 8080, "http://berth.localhost:8080/"),
    ("https", 8443, "https://berth.localhost:8443/"),
    ("http", 443, "http://berth.localhost:443/"),
    ("https", 80, "https://berth.localhost:80/"),
])
def test_public_url_omits_only_the_default_port(scheme, port, expected):
    config = {**CONFIG, "BERTH_SCHEME": scheme, "BERTH_HTTP_PORT": port}
    assert public_url(config, DOMAIN) == expected


def test_public_url_keeps_the_path_for_a_tool_host():
    host = tool_host("echo", "alice", DOMAIN)
    assert public_url(CONFIG, host, "/lab?x=1") == "http://echo--alice.berth.localhost:8080/lab?x=1"


# -- safe_next_url: what is allowed -----------------------------------------------------

@pytest.mark.parametrize("value", ["/", "/catalogue", "/a/b?c=d&e=f#frag", "/%2F%2Fevil.com"])
def test_safe_next_url_turns_relative_paths_into_main_host_urls(value):
    assert safe_next_url(CONFIG, value) == "http://berth.localhost:8080" + value


@pytest.mark.parametrize("value", [
    "http://berth.localhost:8080/",
    "http://berth.localhost:8080/catalogue?q=1",
    "http://BERTH.localhost:8080/x",
    # Tool hosts
    "http://echo-0a1b2c3d.berth.localhost:8080/",
    "http://echo.berth.localhost:8080/",           # a shared tool
    "http://jupyterlab-deadbeef.berth.localhost:8080/lab/tree/x.ipynb?reset",
])
def test_safe_next_url_allows_the_main_host_and_tool_hosts(value):
    assert safe_next_url(CONFIG, value) == value


def test_safe_next_url_allows_an_omitted_default_port():
    config = {**CONFIG, "BERTH_SCHEME": "https", "BERTH_HTTP_PORT": 443}
    assert safe_next_url(config, "https://berth.localhost/x") == "https://berth.localhost/x"
    assert safe_next_url(config, "https://berth.localhost:443/x") == "https://berth.localhost:443/x"
    assert safe_next_url(config, "/x") == "https://berth.localhost/x"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_safe_next_url_sends_an_empty_value_home(value):
    assert safe_next_url(CONFIG, value) == HOME


# -- safe_next_url: open-redirect tricks all go home ------------------------------------

@pytest.mark.parametrize("value", [
    # Other hosts
    "http://evil.com/",
    "http://evil.com:8080/",
    "http://evilberth.localhost:8080/",
    "http://berth.localhost.evil.com:8080/",
    "http://echo-0a1b2c3d.berth.localhost.evil.com:8080/",
    "http://a.echo-0a1b2c3d.berth.localhost:8080/",
    "http://echo_x.berth.localhost:8080/",
    "http://localhost:8080/",
    "http://127.0.0.1:8080/",
    "http://evil.com#@berth.localhost:8080/",
    "http://evil.com?@berth.localhost:8080/",
    # Protocol-relative and backslash tricks
    "//evil.com",
    "//evil.com/berth.localhost",
    "///evil.com",
    "/\\evil.com",
    "\\\\evil.com",
    "\\/evil.com",
    "http:\\\\evil.com",
    "http://berth.localhost:8080\\@evil.com/",
    # Other schemes
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    " javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "https://berth.localhost:8080/",
    "ftp://berth.localhost:8080/",
    "http:/berth.localhost:8080/",
    "http:evil.com",
    "berth.localhost:8080/x",
    # Wrong port
    "http://berth.localhost/",
    "http://berth.localhost:80/",
    "http://berth.localhost:8081/",
    "http://echo-0a1b2c3d.berth.localhost:9999/",
    "http://berth.localhost:99999/",
    "http://berth.localhost:abc/",
    # Userinfo
    "http://user@berth.localhost:8080/",
    "http://user:pass@berth.localhost:8080/",
    "http://berth.localhost:8080@evil.com/",
    "http://:@berth.localhost:8080/",
    # CR, LF, tab and NUL: header injection and parser confusion
    "/\r\nSet-Cookie: x=1",
    "/ok\nLocation: http://evil.com/",
    "/\tevil",
    "/\x00evil",
    "http://berth.localhost:8080/\r\nX: y",
    "\r\n//evil.com",
    # Very long: nginx refuses an upstream answer whose headers outgrow one page (4 KiB), so a
    # longer Location would turn a successful sign-in into a 502.
    "/" + "a" * 10_000,
    "http://berth.localhost:8080/" + "a" * 10_000,
    "http://echo-0a1b2c3d.berth.localhost:8080/?q=" + "x" * 100_000,
])
def test_safe_next_url_sends_open_redirect_tricks_and_very_long_values_home(value):
    assert safe_next_url(CONFIG, value) == HOME


def test_safe_next_url_keeps_a_long_but_reasonable_path():
    value = "/" + "a" * 1500
    assert safe_next_url(CONFIG, value) == "http://berth.localhost:8080" + value


# -- cookies, relative paths and BERTH_TOOLS_DOMAIN ----------------------------------------

def test_cookie_names_carry_the_host_prefix_only_over_https():
    config = {**CONFIG, "BERTH_SESSION_COOKIE": "berth_session"}
    assert (session_cookie_name(config), tool_cookie_name(config)) == ("berth_session", "berth_session_tool")
    config["BERTH_SCHEME"] = "https"
    assert session_cookie_name(config) == "__Host-berth_session"
    assert tool_cookie_name(config) == "__Host-berth_session_tool"


@pytest.mark.parametrize("value, safe", [
    ("/", True), ("/lab?x=1&y=%20", True), ("/a//b", True),
    ("", False), (None, False), ("//evil.example", False), ("///evil.example", False),
    ("/\\evil.example", False), ("https://evil.example/", False), ("lab", False),
    ("/x\r\nSet-Cookie: a=1", False), ("/" + "a" * 2000, False),
])
def test_safe_relative_path_keeps_the_browser_on_the_same_host(value, safe):
    assert safe_relative_path(value) == (value if safe else None)


def test_a_tools_domain_of_its_own_holds_the_tool_hosts():
    config = {**CONFIG, "BERTH_TOOLS_DOMAIN": "berth-tools.example"}
    assert tools_domain(config) == "berth-tools.example" and tools_domain(CONFIG) == DOMAIN
    assert parse_tool_host("echo-0a1b2c3d.berth-tools.example", tools_domain(config)) == ToolHost("echo", "0a1b2c3d")
    tool = "http://echo-0a1b2c3d.berth-tools.example:8080/lab"
    assert safe_next_url(config, tool) == tool
    # Under the main domain, a tool-shaped name is no longer a tool host.
    assert safe_next_url(config, "http://echo-0a1b2c3d.berth.localhost:8080/") == HOME
    assert safe_next_url(config, "http://berth.localhost:8080/x") == "http://berth.localhost:8080/x"


@pytest.mark.parametrize("tools, message", [
    ("localhost", "must not lie under BERTH_TOOLS_DOMAIN"),
    ("tools_domain.example", "is not a plain host name"),
    (".example", "is not a plain host name"),
])
def test_a_tools_domain_that_cannot_work_is_refused(tmp_path, tools, message):
    with pytest.raises(SettingError) as error:
        load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_TOOLS_DOMAIN": tools})
    assert message in str(error.value)
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_TOOLS_DOMAIN": "Tools.Example"})
    assert settings["BERTH_TOOLS_DOMAIN"] == "tools.example"
