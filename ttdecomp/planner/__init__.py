"""Plan a TT compression before touching a weight (being split into one file per concept)."""

from __future__ import annotations

from ._plan import DEFAULT_EXCLUDE, ModelPlan, Plan, plan, plan_model

__all__ = ["DEFAULT_EXCLUDE", "ModelPlan", "Plan", "plan", "plan_model"]
