"""The Universal Projection Module: expert blocks, routers, the mixture, and the one-to-K expert builder."""

from onellm.projectors.experts import build_expert, register_expert
from onellm.projectors.routers import Router, register_router, router_modes
from onellm.projectors.upm import UniversalProjectionModule, expand_experts, placeholder_count

__all__ = [
    "Router",
    "UniversalProjectionModule",
    "build_expert",
    "expand_experts",
    "placeholder_count",
    "register_expert",
    "register_router",
    "router_modes",
]
