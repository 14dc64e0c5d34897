"""The Universal Projection Module: expert blocks, routers, the mixture, and the one-to-K expert builder."""

from onellm.projectors.experts import build_expert, register_expert
from onellm.projectors.queries import query_sources, register_queries
from onellm.projectors.routers import Router, register_router, router_modes
from onellm.projectors.upm import UniversalProjectionModule, expand_experts, placeholder_count

__all__ = [
    "Router",
    "UniversalProjectionModule",
    "build_expert",
    "expand_experts",
    "placeholder_count",
    "query_sources",
    "register_expert",
    "register_queries",
    "register_router",
    "router_modes",
]
