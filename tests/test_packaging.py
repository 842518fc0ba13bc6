"""The install layout: the repository folder kernels/ is the package megan_jax.kernels, without cycles."""

import ast
import os
import tomllib

import megan_jax.kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(REPO, "kernels")


def _imports(path: str) -> set[str]:
  """The megan_jax.kernels modules that the file imports, function-local imports included."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("megan_jax.kernels"):
      found.add(node.module)
      found.update(f"{node.module}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("megan_jax.kernels"))
  return found


def test_kernels_have_no_import_cycle():
  modules = {f"megan_jax.kernels.{name[:-3]}": os.path.join(KERNELS, name)
             for name in os.listdir(KERNELS) if name.endswith(".py") and name != "__init__.py"}
  graph = {m: _imports(path) & set(modules) for m, path in modules.items()}
  assert graph["megan_jax.kernels.deform_conv_pallas"] == {"megan_jax.kernels.sampling"}

  def reaches(start: str, target: str, seen=()) -> bool:
    return any(n == target or (n not in seen and reaches(n, target, seen + (n,)))
               for n in graph[start])

  assert not [m for m in graph if reaches(m, m)], graph


def test_kernels_install_as_megan_jax_kernels_not_a_top_level_name():
  assert os.path.samefile(os.path.dirname(megan_jax.kernels.__file__), KERNELS)
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
  assert find["include"] == ["megan_jax*"]
