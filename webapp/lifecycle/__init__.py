"""The pages a tool host shows while its tool is not running: start, spawning, failed.

nginx proxies a tool host here, instead of to the tool, when the auth answer says so
(X-Berth-Page). The user stays on the tool's own address throughout, so deep links and
bookmarks survive a restart. Paths under /__berth/ on tool hosts belong to this package.
"""
