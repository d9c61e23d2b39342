"""Hypothesis profiles for the property tests, registered once (tests/conftest.py calls `register`).

- `ci` (the default, and what CI=true runs): a fixed seed per test
  (derandomize), a fixed number of examples, no example database, no
  deadline, failures printed with a reproduction blob.  Same examples on
  every run, so a CI failure is a real change, not a new random draw.
- `fuzz` (`HYPOTHESIS_PROFILE=fuzz`, `make fuzz`): random seeds, ten times
  the examples, found failures kept in the local database and replayed.

A test that needs fewer or more examples than the profile's baseline says so
with `examples(n)`: n under `ci`, scaled by the same factor under `fuzz`, so
no test's own settings can pin the count or the seed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 100
FUZZ_FACTOR = 10


def register() -> None:
    common = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                        HealthCheck.large_base_example])
    settings.register_profile("ci", derandomize=True, max_examples=CI_EXAMPLES, database=None, **common)
    settings.register_profile("fuzz", derandomize=False, max_examples=CI_EXAMPLES * FUZZ_FACTOR, **common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")


def examples(ci: int, **kw) -> settings:
    """Settings for one test: `ci` examples under the ci profile, scaled alike under every other."""
    n = max(1, ci * settings.default.max_examples // CI_EXAMPLES)
    return settings(parent=settings.default, max_examples=n, **kw)
