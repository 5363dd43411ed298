"""A table's scope holds one training setting: runs of one profile name at other epoch counts
(``medium`` runs stored as ``quick``) form their own scope; Figure 1(b)'s epoch-gridded trainings
join the scope they were scaled from."""

from __future__ import annotations

from _stored import add_finished_run

from kdcicam.analysis.results import ScopeKey, cell_frame, scopes_of
from kdcicam.registry.ablations import load_registry
from kdcicam.store import open_store

METRICS = {"top1_cls": 0.5, "top1_loc": 0.3, "gt_known_loc": 0.4}


def _runs(tmp_path, runs):
    with open_store(f"sqlite:///{tmp_path / 'r.db'}") as store:
        for run_id, table, cell, epochs in runs:
            add_finished_run(store, run_id, table, cell, 0, METRICS, train={"epochs": epochs})
        return store.list_runs(), store.final_metrics()


def test_other_epochs_under_one_profile_name_are_another_scope(tmp_path):
    reg = load_registry()
    runs, finals = _runs(tmp_path, [("q5", "table3", "base", 5), ("q12", "table3", "base", 12)])
    scopes = scopes_of(reg, runs)
    assert scopes["q5"] != scopes["q12"]
    assert (scopes["q5"].epochs, scopes["q12"].epochs) == (5, 12)
    assert scopes["q5"].slug != scopes["q12"].slug and "12 epochs" in scopes["q12"].title
    frame = cell_frame(reg, runs, finals)
    assert frame.groupby("scope", sort=False)["run_id"].nunique().to_dict() == {scopes["q5"]: 1, scopes["q12"]: 1}


def test_epoch_gridded_runs_join_the_scope_they_were_scaled_from(tmp_path):
    # figure1b grids train.epochs by 0.5 and 1.0: 3 = round(5 * 0.5) joins the 5-epoch scope; 7 is no
    # multiple of either scope's epochs and keeps its own scope
    reg = load_registry()
    runs, _ = _runs(tmp_path, [("q5", "table3", "base", 5), ("q12", "table3", "base", 12),
                               ("g3", "figure1b", "ci-cam", 2), ("g6", "figure1b", "ci-cam", 6),
                               ("g7", "figure1b", "ci-cam", 7)])
    scopes = scopes_of(reg, runs)
    assert scopes["g3"] == scopes["q5"]  # max(1, round(5 * 0.5)) = 2
    assert scopes["g6"] == scopes["q12"]  # 12 * 0.5
    assert scopes["g7"].epochs == 7 and scopes["g7"] not in (scopes["q5"], scopes["q12"])


def test_a_stored_config_without_epochs_has_no_epochs_in_its_scope():
    key = ScopeKey("synthetic", "vgg16", "quick", "reference", "fp")
    assert key.epochs is None and key.slug == "synthetic-vgg16-quick-reference-fp"
