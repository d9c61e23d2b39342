"""Pure calculation: datastore model -> desired dataplane state (no I/O)."""

from felix.desired import DesiredState, Endpoint, FamilyState

from .calculator import CalcConfig, Calculator

__all__ = ["CalcConfig", "Calculator", "DesiredState", "Endpoint", "FamilyState"]
