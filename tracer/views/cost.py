"""What memtrace's own probes cost, as people read it: the dashboard's line, doctor's rows."""

from __future__ import annotations

from typing import Optional

from ..model.probes import CostRates, ProbeCost, ProbeRate, cost_rates

LINE_PROBES = 3  # probes named on the dashboard's line: the busiest ones


def events(rate: float) -> str:
    """A rate of events, short: 12, 850, 12.5 k, 1.2 M."""
    if rate >= 1e6:
        return f"{rate / 1e6:.1f} M"
    if rate >= 1e4:
        return f"{rate / 1e3:.0f} k"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f} k"
    return f"{rate:.0f}"


def cpu_share(share: float) -> str:
    """A share of one CPU as a percentage with two significant digits: 0.31%, 12%."""
    pct = share * 100
    if pct <= 0:
        return "0%"
    if pct < 0.001:
        return "<0.001%"
    return f"{pct:.2g}%"


def ns_per_event(r: ProbeRate) -> str:
    return "-" if r.ns_per_event is None else f"{r.ns_per_event:.0f} ns"


def cost_line(rates: Optional[CostRates], latest: Optional[ProbeCost]) -> Optional[str]:
    """The dashboard's one line; None when the source reports no cost (a replay)."""
    if latest is None:
        return None
    if not latest.counting:
        return f"cost: {latest.note or 'not measured'}"
    if rates is None:
        return "cost: measuring..."
    parts = [f"cost: {cpu_share(rates.cpu)} of one CPU", f"{events(rates.events_per_s)} events/s"]
    busiest = [r for r in rates.probes if r.ns_per_event is not None][:LINE_PROBES]
    parts += [f"{r.probe} {ns_per_event(r)}/event ({events(r.events_per_s)}/s)" for r in busiest]
    return ", ".join(parts)  # plain ASCII: the same line serves the plain-text dashboard


class CostWatch:
    """The cost readings a live view has seen: rates over the last interval, and over the
    whole run for the summary."""

    def __init__(self) -> None:
        self.first: Optional[ProbeCost] = None
        self.before: Optional[ProbeCost] = None
        self.latest: Optional[ProbeCost] = None

    def update(self, cost: Optional[ProbeCost]) -> None:
        if cost is None or self.latest is not None and cost.at_ns <= self.latest.at_ns:
            return
        if not cost.counting:  # nothing to rate: start again once counting starts
            self.first = self.before = None
            self.latest = cost
            return
        if self.first is None or self.latest is None or not self.latest.counting:
            self.first = cost
        self.before, self.latest = self.latest, cost

    def line(self) -> Optional[str]:
        return cost_line(cost_rates(self.before, self.latest), self.latest)

    def summary(self) -> Optional[str]:
        """The whole run's average, for the summary printed at the end."""
        if self.latest is None:
            return None
        rates = cost_rates(self.first, self.latest)
        line = cost_line(rates, self.latest)
        if line is None or rates is None:
            return line
        return line.replace("cost:", f"cost over {rates.seconds:.0f} s:", 1)


def cost_rows(rates: CostRates) -> list[tuple[str, str, str, str]]:
    """doctor's rows: probe, events/s, ns per event, share of one CPU; busiest first."""
    return [(r.probe, events(r.events_per_s), ns_per_event(r), cpu_share(r.cpu))
            for r in rates.probes]
