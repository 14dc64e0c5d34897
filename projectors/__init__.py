"""The Universal Projection Module: expert blocks, router, mixture."""
