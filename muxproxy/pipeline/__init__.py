"""The job pipeline: the job state machine (``jobs``), the scheduler that claims due
jobs (``scheduler``) on the shared worker loop (``worker``), the runner of one step
(``runner``) with its retry policy (``backoff``) and circuit breakers (``breaker``),
the end-of-job notices (``events``) and the retention sweep (``retention``)."""
