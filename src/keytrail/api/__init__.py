"""HTTP front end: ASGI app, SigV4, request validation, AWS error responses."""
