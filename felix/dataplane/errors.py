"""The one exception writers raise, so Felix can count failures and keep running."""


class DataplaneError(Exception):
    """An apply that failed after its retries; the writer keeps its dirty state and retries next apply."""
