"""Work that one process of a multi-process job does alone: evaluation and upscaling.

Training uses every process (each feeds its slice of the global batch, `data.pipeline`). Evaluation
and upscaling a video are small next to it and write files that must be written once (the table,
the JSON scores, the video), so in a job of several processes (`config.distributed.enabled`)
process 0 does them and the other processes say so and wait for it at a barrier of the
jax.distributed coordination service (with a long timeout: a process that left early would wait in
JAX's shutdown, whose timeout is 5 minutes, and fail), then end with exit code 0. Process 0's
output says how it went: an error there ends process 0 with its message and exit code, and the
others end when it does.
"""

import sys

import jax
import orbax.checkpoint as ocp

WAIT_SECONDS = 7 * 24 * 3600  # the other processes wait this long for process 0 at most
_calls = 0  # makes each barrier's name unique within the job


def on_process_0(what: str, fn, *args, **kwargs):
  """fn(*args, **kwargs) on process 0 only (its result; None on the other processes).

  With one process it is just the call. `what` names the work in the other processes' line
  ("--mode=eval", "the final evaluation").
  """
  global _calls
  if jax.process_count() == 1:
    return fn(*args, **kwargs)
  _calls += 1
  index, count = jax.process_index(), jax.process_count()
  barrier = f"megan_jax: {what} done on process 0 ({_calls})"
  if index == 0:
    try:
      return fn(*args, **kwargs)
    finally:  # after an error too, so that the other processes end with this one
      ocp.multihost.get_barrier_sync_fn()(key=barrier, timeout_ms=WAIT_SECONDS * 1000)
  print(f"process {index} of {count}: {what} runs on process 0 only, which writes its output "
        f"and prints its results; waiting for it", flush=True)
  ocp.multihost.get_barrier_sync_fn()(key=barrier, timeout_ms=WAIT_SECONDS * 1000)
  print(f"process {index} of {count}: process 0 finished {what}", file=sys.stdout, flush=True)
  return None
