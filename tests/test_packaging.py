"""Packaging: one version, a light `import cgdmer_jax`, ranges (not pins) in setup.cfg with the
tested pins in constraints.txt, TensorFlow chosen per platform, LICENSE and CITATION.cff."""

import configparser
import importlib.metadata
import json
import pathlib
import re
import subprocess
import sys

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import cgdmer_jax

REPO = pathlib.Path(__file__).resolve().parents[1]


def _setup_cfg():
  parser = configparser.RawConfigParser()
  parser.read(REPO / "setup.cfg")
  return parser


def _requirements(value: str) -> list[Requirement]:
  lines = [line.strip() for line in value.splitlines()]
  return [Requirement(line) for line in lines if line and not line.startswith("#")]


def _install_requires():
  return _requirements(_setup_cfg()["options"]["install_requires"])


def _extras():
  section = _setup_cfg()["options.extras_require"]
  return {name: _requirements(section[name]) for name in section}


def _constraints():
  pins = {}
  for line in (REPO / "constraints.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      req = Requirement(line)
      specs = list(req.specifier)
      assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {line}"
      pins[canonicalize_name(req.name)] = specs[0].version
  return pins


def test_version_is_the_installed_metadata_version():
  assert re.fullmatch(r"\d+\.\d+\.\d+", cgdmer_jax.__version__)
  assert cgdmer_jax.__version__ == importlib.metadata.version("cgdmer_jax")


def test_setup_cfg_reads_the_version_from_the_package():
  assert _setup_cfg()["metadata"]["version"].strip() == "attr: cgdmer_jax.__version__"


def test_import_loads_neither_jax_nor_tensorflow():
  code = ("import json, sys, cgdmer_jax; print(json.dumps(sorted(m for m in sys.modules "
          "if m.split('.')[0] in ('jax', 'jaxlib', 'tensorflow', 'flax', 'torch'))))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=REPO)
  assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_install_requires_has_ranges_and_no_torch():
  reqs = _install_requires()
  assert len(reqs) >= 15
  names = {canonicalize_name(r.name) for r in reqs}
  assert not names & {"torch", "transformers", "pytest", "pytest-xdist", "ruff"}
  for req in reqs:
    ops = {s.operator for s in req.specifier}
    assert "==" not in ops and "===" not in ops, f"pinned: {req}"
    assert ">=" in ops and "<" in ops, f"not a bounded range: {req}"


def test_extras_test_is_the_runner_and_torch_is_its_own_extra():
  extras = _extras()
  assert {canonicalize_name(r.name) for r in extras["test"]} == {"pytest", "pytest-xdist"}
  assert {canonicalize_name(r.name) for r in extras["bert-reference"]} == {"torch",
                                                                           "transformers"}
  assert "ruff" in {canonicalize_name(r.name) for r in extras["lint"]}
  for name, reqs in extras.items():
    for req in reqs:
      assert "==" not in str(req.specifier), f"[{name}] pinned: {req}"


def test_constraints_pin_every_requirement_within_its_range():
  pins = _constraints()
  reqs = _install_requires() + [r for reqs in _extras().values() for r in reqs]
  for req in reqs:
    name = canonicalize_name(req.name)
    assert name in pins, f"constraints.txt does not pin {name}"
    assert req.specifier.contains(pins[name], prereleases=True), (
        f"constraints.txt pins {name}=={pins[name]}, outside setup.cfg's {req}")


def _env(sys_platform, machine):
  return {"sys_platform": sys_platform, "platform_machine": machine, "python_version": "3.11",
          "platform_system": {"linux": "Linux", "darwin": "Darwin",
                              "win32": "Windows"}[sys_platform]}


def test_tensorflow_build_is_chosen_per_platform():
  tf = {canonicalize_name(r.name): r for r in _install_requires()
        if canonicalize_name(r.name) in ("tensorflow", "tensorflow-cpu")}
  assert set(tf) == {"tensorflow", "tensorflow-cpu"}
  expected = {("linux", "x86_64"): "tensorflow-cpu", ("win32", "AMD64"): "tensorflow-cpu",
              ("darwin", "arm64"): "tensorflow", ("linux", "aarch64"): "tensorflow"}
  for (plat, machine), want in expected.items():
    chosen = [n for n, r in tf.items() if r.marker.evaluate(_env(plat, machine))]
    assert chosen == [want], f"{plat}/{machine}: {chosen}"


def test_license_is_apache_2():
  text = (REPO / "LICENSE").read_text()
  assert "Apache License" in text and "Version 2.0, January 2004" in text
  assert "END OF TERMS AND CONDITIONS" in text
  assert _setup_cfg()["metadata"]["license"].strip() == "Apache-2.0"


def test_citation_cff():
  cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
  assert cff["cff-version"].startswith("1.2")
  assert cff["title"]
  assert cff["authors"] and all(a.get("name") or a.get("family-names") for a in cff["authors"])
  assert str(cff["version"]) == cgdmer_jax.__version__
  paper = cff["preferred-citation"]
  assert paper["title"].startswith("CG-DMER")
  assert "arxiv.org/abs/2602.21154" in paper["url"]
  assert "arXiv:2602.21154" in (REPO / "README.md").read_text()
