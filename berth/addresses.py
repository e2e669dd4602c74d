"""Client addresses and IP allowlists.

nginx passes the address that connected to it (X-Real-IP) and the X-Forwarded-For the request
arrived with. With BERTH_TRUSTED_HOPS proxies in front of nginx, the client is found by walking
that chain from the right, past at most that many hops, each of which must lie in
BERTH_TRUSTED_PROXIES when that is set. Entries further left were written by the client and
prove nothing: with one trusted hop, a client that sends `X-Forwarded-For: 1.2.3.4` itself is
still seen at its real address, because the trusted proxy appends that address after it.

request_client_address is the one rule for a request that came through nginx: the IP
allowlists, the audit log and the sessions' recorded addresses all go by it.
"""
import ipaddress


class AddressError(ValueError):
    pass


def parse_networks(values, field="ip_allowlist"):
    """CIDR strings to networks; a bare address is a /32 (or /128). Errors name the entry."""
    if not isinstance(values, (list, tuple)):
        raise AddressError(f"{field} must be a list of CIDRs such as 10.0.0.0/8")
    networks = []
    for position, value in enumerate(values, start=1):
        if not isinstance(value, str):
            raise AddressError(f"{field}[{position}] must be a CIDR string such as 10.0.0.0/8")
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as error:
            hint = ""
            try:
                hint = f"; did you mean {ipaddress.ip_network(value.strip(), strict=False)}?"
            except ValueError:
                pass
            raise AddressError(f"{field}[{position}] {value!r} is not a CIDR ({error}{hint})") from None
    return networks


def _address(text):
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    # An IPv4 client seen on an IPv6 socket (::ffff:1.2.3.4) is that IPv4 address.
    return getattr(address, "ipv4_mapped", None) or address


def client_address(remote_addr, forwarded_for, trusted_hops, trusted_proxies=()):
    """The client's address, or None when it cannot be told (an unparsable entry)."""
    chain = [entry for entry in (forwarded_for or "").split(",") if entry.strip()] + [remote_addr or ""]
    # The rightmost entry is nginx's own peer; each trusted hop lets us look one further left.
    for hop in range(trusted_hops):
        if len(chain) == 1:
            break
        proxy = _address(chain[-1])
        if proxy is None or (trusted_proxies and not any(proxy in net for net in trusted_proxies)):
            break
        chain.pop()
    return _address(chain[-1])


def request_client_address(config, real_ip, forwarded_for, appended_by_nginx=False):
    """The client's address for a request that nginx passed on, or None when it cannot be told.

    real_ip is X-Real-IP, the address that connected to nginx. forwarded_for is X-Forwarded-For
    as the request arrived (nginx passes it so to the auth check), or, with appended_by_nginx,
    with real_ip appended by nginx (on the way to the sign-in pages and the web app): that last
    copy is dropped first, so that both read the same chain.
    """
    entries = [entry for entry in (forwarded_for or "").split(",") if entry.strip()]
    if appended_by_nginx and entries and entries[-1].strip() == (real_ip or "").strip():
        entries.pop()
    return client_address(real_ip, ",".join(entries), config["BERTH_TRUSTED_HOPS"],
                          config.get("BERTH_TRUSTED_PROXIES", ()))


def allowed(address, networks):
    return address is not None and any(address.version == net.version and address in net
                                       for net in networks)
