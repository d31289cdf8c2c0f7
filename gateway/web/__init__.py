"""The HTTP side: routes, middleware, console, OpenAPI, live status."""
