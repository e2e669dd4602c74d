"""Small tools that ship with Berth, for the demo catalogue and the tests. Not part of Berth itself."""
