"""The reference's `rlm.logger.rlm_logger`: `RLMLogger` (ours, in `rlm.logger.jsonl`).

`RLMLogger()` keeps trajectories in memory, `RLMLogger(log_dir)` also writes JSON-lines files;
`get_trajectory()` and `completion.metadata` give the reference's `{run_metadata, iterations}`
(built by `rlm.logger.trajectory`), with our full record list alongside.
"""

from rlm.logger.jsonl import RLMLogger

__all__ = ["RLMLogger"]
