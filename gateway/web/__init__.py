"""The gateway's HTTP server edge: what runs before a request becomes an ASGI scope."""
