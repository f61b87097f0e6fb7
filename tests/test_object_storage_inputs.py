"""Raw records are read from local files: a gs:// URL where one is expected fails at once with
one line that says so, never as a mangled local path (`gs:/b/x`) reported missing."""

import pytest

from cgdmer_jax.evaluators import records
from cgdmer_jax.evaluators import runner
from cgdmer_jax.evaluators import tasks as tasks_lib
from cgdmer_jax.finetuning import custom
from cgdmer_jax.train import checks
from configs import pretrain
from data_pipelines import locate
from data_pipelines import sources
from data_pipelines.sources import base

URL = "gs://bucket/ecg"


def _assert_says_object_storage(excinfo):
  msg = str(excinfo.value)
  assert URL in msg and "object storage" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("call", [
    lambda: sources.get_source("ptbxl", URL),                      # data_pipelines.build --input
    lambda: locate.read_inputs(URL),                               # cgdmer_jax.embed --input
    lambda: tasks_lib.read_labels("ptbxl_super", URL),             # evaluate --tables_root
    lambda: records.locator(tasks_lib.TASKS["ptbxl_super"], URL, 100),
    lambda: custom.read_task(URL + "/labels.csv"),                 # finetune --labels_csv
    lambda: custom.locator(URL),                                   # finetune --records_dir
], ids=["build", "embed", "tables", "records", "labels_csv", "records_dir"])
def test_object_storage_url_is_refused_in_one_line(call):
  with pytest.raises(base.LayoutError) as excinfo:
    call()
  _assert_says_object_storage(excinfo)


def test_evaluate_data_root_url_is_refused(tmp_path):
  with pytest.raises(base.LayoutError) as excinfo:
    runner.evaluate_models([str(tmp_path)], task_names=["ptbxl_super"], fractions=[1.0],
                           data_root=URL, out=str(tmp_path / "eval"))
  _assert_says_object_storage(excinfo)


def test_training_refuses_a_url_best_data_root_before_it_starts(tmp_path):
  config = pretrain.get_config("size=tiny")
  config.data.dir = str(tmp_path)
  config.best.zero_shot_task = "ptbxl_super"
  config.best.data_root = URL
  with pytest.raises(checks.ConfigError) as excinfo:
    checks.check(config, need_data=False)
  _assert_says_object_storage(excinfo)


def test_local_paths_still_pass_the_check(tmp_path):
  base.require_local(tmp_path, "input")  # no error: the folder's own checks follow
  base.require_local(str(tmp_path / "not_yet"), "input")
