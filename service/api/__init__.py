"""The HTTP layer: app factory and lifespan, request bodies, schemas, middleware, routes."""
