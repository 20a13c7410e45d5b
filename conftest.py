"""pytest configuration shared by the unit tests and nbval."""


def pytest_collectstart(collector):
    # nbval: progress bars and library warnings go to stderr, which differs from run to run.
    if hasattr(collector, "skip_compare"):
        collector.skip_compare = collector.skip_compare + ("stderr",)
