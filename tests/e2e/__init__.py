"""End-to-end tests: the extension installed into real WebUI hosts, driven over HTTP only."""
