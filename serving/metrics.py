"""Server metrics in the Prometheus text format (``GET /metrics``), without a client library dependency."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable

# Seconds; TTFT on a CPU spans milliseconds (tiny model) to tens of seconds (queued behind a batch).
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = _BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}')
        suffix = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{suffix} {self.total:.6f}", f"{name}_count{suffix} {self.n}"]


class Metrics:
    """Counters and histograms of one server process (thread-safe: engines report from worker threads)."""

    def __init__(self, engine: str, unfinished: Callable[[], int] = lambda: 0):
        self.engine = engine
        self.unfinished = unfinished  # the engine's own count of requests it holds
        self._lock = threading.Lock()
        self.responses: Counter[tuple[str, int]] = Counter()  # (path, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.in_flight = 0
        self.disconnects = 0  # requests whose client left before the answer was complete
        self.ttft = Histogram()
        self.latency = Histogram()

    def response(self, path: str, status: int) -> None:
        with self._lock:
            self.responses[(path, status)] += 1

    def finished(self, prompt_tokens: int, completion_tokens: int, ttft: float | None, latency: float) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            if ttft is not None:
                self.ttft.observe(ttft)
            self.latency.observe(latency)

    def disconnected(self) -> None:
        with self._lock:
            self.disconnects += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP onellm_http_responses_total HTTP responses by path and status code.",
                "# TYPE onellm_http_responses_total counter",
                *(
                    f'onellm_http_responses_total{{path="{path}",status="{status}"}} {count}'
                    for (path, status), count in sorted(self.responses.items())
                ),
                "# HELP onellm_requests_in_flight Chat requests admitted and not finished.",
                "# TYPE onellm_requests_in_flight gauge",
                f"onellm_requests_in_flight {self.in_flight}",
                "# HELP onellm_engine_unfinished_requests Requests the engine holds (queued or generating).",
                "# TYPE onellm_engine_unfinished_requests gauge",
                f"onellm_engine_unfinished_requests {self.unfinished()}",
                "# HELP onellm_client_disconnects_total Chat requests whose client left before the answer was "
                "complete (their generation is aborted).",
                "# TYPE onellm_client_disconnects_total counter",
                f"onellm_client_disconnects_total {self.disconnects}",
                "# HELP onellm_prompt_tokens_total Prompt tokens processed (placeholders included).",
                "# TYPE onellm_prompt_tokens_total counter",
                f"onellm_prompt_tokens_total {self.prompt_tokens}",
                "# HELP onellm_completion_tokens_total Tokens generated.",
                "# TYPE onellm_completion_tokens_total counter",
                f"onellm_completion_tokens_total {self.completion_tokens}",
                "# HELP onellm_time_to_first_token_seconds From admission to the first generated token.",
                "# TYPE onellm_time_to_first_token_seconds histogram",
                *self.ttft.lines("onellm_time_to_first_token_seconds"),
                "# HELP onellm_request_latency_seconds From admission to the last token.",
                "# TYPE onellm_request_latency_seconds histogram",
                *self.latency.lines("onellm_request_latency_seconds"),
                "# HELP onellm_engine_info The generation engine of this server.",
                "# TYPE onellm_engine_info gauge",
                f'onellm_engine_info{{engine="{self.engine}"}} 1',
            ]
        return "\n".join(lines) + "\n"
