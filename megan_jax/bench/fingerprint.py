"""Cost of the checkpoint fingerprints (`fingerprint.state_fingerprints`) on a model's train state.

    python -m megan_jax.bench.fingerprint [--variant=megan] [--repeats=5]

The parameter tree is the model's (`jax.eval_shape` of its init at the paper's 4 x 32x32 crops),
filled with random float32 values on the default device; the optimiser state is Adam's for it.
Prints the parameter count and the median milliseconds of the fingerprints of parameters,
optimiser state and a data iterator state (what every checkpoint computes), and per parameter set.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from megan_jax import fingerprint
from megan_jax.models import build_model, model_config


def _median_ms(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="megan")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  model = build_model(model_config(args.variant))
  x = jax.ShapeDtypeStruct((1, 4, 32, 32, 3), jnp.float32)  # (B, n+1, h, w, 3)
  init = lambda k, x: model.init({"params": k, "lmga": k}, x, train=False)["params"]
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), shapes)
  state = {"params": params, "opt_state": optax.adam(1e-4).init(params)}
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  data_state = {"next_index": 123456, "seed": 0}
  full = _median_ms(lambda: fingerprint.state_fingerprints(state, data_state), args.repeats)
  only_params = _median_ms(lambda: fingerprint.tree_hash(params), args.repeats)
  print(f"{args.variant}: {count:,} parameters on {jax.devices()[0].device_kind}; fingerprints "
        f"(params + Adam state + data state) {full:.0f} ms; params alone {only_params:.0f} ms "
        f"(median of {args.repeats})")


if __name__ == "__main__":
  main()
