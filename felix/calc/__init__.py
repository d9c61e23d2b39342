"""Pure calculation: datastore model -> desired dataplane state (no I/O)."""

from .calculator import CalcConfig, Calculator, DesiredState, FamilyState
from .model import Endpoint

__all__ = ["CalcConfig", "Calculator", "DesiredState", "Endpoint", "FamilyState"]
