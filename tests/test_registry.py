"""The ablation registry: the shipped files load, cells resolve to shared runs, and every kind of
bad registry file gives one line naming the file, the cell and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kdcicam.core.errors import ConfigError
from kdcicam.data.base import DatasetIndex
from kdcicam.execution.plan import make_plan
from kdcicam.registry.ablations import DEFAULT_REGISTRY, load_registry
from kdcicam.registry.resolve import Scope, apply_multipliers, resolve_config


@pytest.fixture()
def reg_dir(tmp_path: Path) -> Path:
    dst = tmp_path / "ablations"
    shutil.copytree(DEFAULT_REGISTRY, dst)
    return dst


def _fake_data(data_cfg):
    return DatasetIndex(name="synthetic", root=Path("/nonexistent"), classes=tuple("abcdefghij"),
                        train=(), test=(), fingerprint="fp")


def _plan(reg, tables, seeds=(0,), profile="quick"):
    return make_plan(reg, list(tables), scope=Scope(), profile=profile, variant="reference",
                     seeds=list(seeds), open_data=_fake_data)


def test_shipped_registry_loads_every_paper_artefact():
    reg = load_registry()
    assert {"table3", "table4", "table5", "figure1b"} <= set(reg.tables)
    t3 = reg.table("table3")
    assert [c.name for c in t3.cells] == ["Base", "+ConPool", "+KD"]
    # the paper's numbers come from ablation-tables.csv
    assert t3.cell("base").paper["cub/vgg16"]["top1_loc"] == 65.6
    assert reg.table("table5").cell("loc_teacher_by_gt_known").paper["ilsvrc/vgg16"]["top1_cls"] == 60.5


def test_paper_settings_come_from_the_hyperparameter_file():
    reg = load_registry()
    cfg = resolve_config(reg, scope=Scope(dataset="cub", backbone="inceptionv3"), profile="paper",
                         variant="paper", role="student", context_pool=True, seed=0, num_classes=200)
    assert cfg.train.lr == 0.0001 and cfg.eval.test_resize == 500 and cfg.eval.test_crop == 299
    assert cfg.eval.theta == 0.21 and cfg.model.nonlocal_blocks == 3 and cfg.train.betas == (0.9, 0.99)
    assert cfg.loss.mu == 0.6 and cfg.loss.delta == 2e-08
    assert cfg.train.lr_schedule == "constant"  # the paper's text states no schedule


def test_reference_variant_settings_depend_on_role():
    reg = load_registry()
    kw = dict(scope=Scope(dataset="cub"), profile="paper", variant="reference", context_pool=True,
              seed=0, num_classes=200)
    student = resolve_config(reg, role="student", **kw)
    teacher = resolve_config(reg, role="loc_teacher", **kw)
    assert student.train.halve_every == 40 and teacher.train.halve_every == 14
    assert student.train.backbone_lr_mult == 0.1


def test_same_model_in_two_tables_is_one_run_and_teachers_are_shared():
    reg = load_registry()
    plan = _plan(reg, ["table3", "table4", "table5"])
    by_cell = {(c.table, c.cell): c.run_id for c in plan.cells}
    assert by_cell[("table3", "conpool")] == by_cell[("table4", "student")]
    assert by_cell[("table3", "conpool+kd")] == by_cell[("table4", "student+both_teachers")]
    assert by_cell[("table3", "conpool+kd")] == by_cell[("table5", "kd_with_teacher_by_gt_known")]
    # Table 5's two loc-teacher cells: under reference on CUB/VGG16 settings, the authors' two runs
    assert by_cell[("table5", "loc_teacher_by_top1_loc")] != by_cell[("table5", "loc_teacher_by_gt_known")]
    roles = [r.role for r in plan.runs]
    assert roles.count("cls_teacher") == 1 and roles.count("loc_teacher") == 2
    # teachers come before every run that depends on them
    position = {r.run_id: i for i, r in enumerate(plan.runs)}
    for r in plan.runs:
        for dep in r.deps:
            assert position[dep] < position[r.run_id]
    # ... and lead the plan, so that `--jobs N` starts the longest chains (teacher -> distilled) first
    assert {r.role for r in plan.runs[:2]} == {"cls_teacher", "loc_teacher"}
    assert plan.runs[-1].role == "distilled"


def test_seeds_multiply_runs_with_teachers_per_seed():
    reg = load_registry()
    one = _plan(reg, ["table3"], seeds=(0,))
    three = _plan(reg, ["table3"], seeds=(0, 1, 2))
    assert len(three.runs) == 3 * len(one.runs)
    kd = [r for r in three.runs if r.role == "distilled"]
    for r in kd:
        for dep in r.deps:
            assert three.run(dep).cfg.train.seed == r.cfg.train.seed


def test_grid_multiplies_the_resolved_values():
    reg = load_registry()
    base = resolve_config(reg, scope=Scope(), profile="quick", variant="reference", role="student",
                          context_pool=True, seed=0, num_classes=10)
    scaled = apply_multipliers(base, {"train.lr": 2.0, "train.epochs": 0.5})
    assert scaled.train.lr == pytest.approx(2 * base.train.lr)
    assert scaled.train.epochs == round(base.train.epochs / 2)
    plan = _plan(reg, ["figure1b"])
    assert len({c.run_id for c in plan.cells if c.cell == "ci-cam"}) == 6


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        ("table3.toml", "context_pool = false", "contxt_pool = false", "table3.toml: cell 'base': unknown key 'contxt_pool'"),
        ("table3.toml", 'name = "Base"\n', "", "table3.toml: cell 'base': missing key 'name'"),
        ("table3.toml", 'loc = "loc_teacher"', 'loc = "loc_teacher_x"', "table3.toml: cell 'conpool+kd': teachers.loc = 'loc_teacher_x'"),
        ("table3.toml", 'cls_select = "top1_cls"', 'cls_select = "best"', "teachers.cls_select = 'best'"),
        ("table3.toml", 'role = "student"', 'role = "teacher"', "table3.toml: cell 'base': role = 'teacher'"),
        ("table3.toml", 'reference_cell = "base"', 'reference_cell = "bas"', "table3.toml: reference_cell = 'bas'"),
        ("table3.toml", "top1_loc = 65.6", "top1_lc = 65.6", "paper.cub/vgg16.top1_lc: unknown metric"),
        ("table3.toml", "top1_loc = 65.6", "top1_loc = 656", "paper.cub/vgg16.top1_loc = 656"),
        ("table3.toml", 'title = "Table 3', 'title = "Table 3\n[[[', "table3.toml: TOML syntax error"),
        ("table5.toml", 'teacher = "loc_teacher_top1"', 'teacher = "nobody"', "table5.toml: cell 'loc_teacher_by_top1_loc': teacher = 'nobody'"),
        ("table5.toml", 'select = "top1_loc"', 'select = "epoch7"', "select = 'epoch7'"),
        ("figure1b.toml", '"train.lr" = [0.5', '"train.lrr" = [0.5', "unknown key 'train.lrr'"),
        ("figure1b.toml", '"train.lr" = [0.5', '"train.lr" = [-0.5', "grid.train.lr: expected a non-empty list of positive"),
        ("table4.toml", 'versus = "student"', 'versus = "stu"', "claim 'cls-teacher-helps-cls': versus = 'stu'"),
        ("figure1b.toml", 'kind = "pareto"', 'kind = "paretoo"', "claim 'kd-escapes-cl-dilemma': kind = 'paretoo': must be one of"),
        ("figure1b.toml", 'kind = "dilemma"\ncell = "ci-cam"', 'kind = "dilemma"\nversus = "kd-ci-cam"\ncell = "ci-cam"',
         "claim 'ci-cam-cl-dilemma': unknown key 'versus'"),
        ("figure1b.toml", 'metrics = ["top1_cls", "top1_loc"]\n\n[[claims]]\nkey = "ci-cam-cl-dilemma-gt-known"',
         'metrics = ["top1_cls"]\n\n[[claims]]\nkey = "ci-cam-cl-dilemma-gt-known"',
         "claim 'ci-cam-cl-dilemma': a dilemma claim needs exactly two metrics (x, y), got 1"),
        ("teachers.toml", 'role = "loc_teacher"', 'role = "student"', "teachers.toml: teacher 'loc_teacher': role = 'student'"),
        ("profiles.toml", '"model.width" = 0.125', '"model.width" = "wide"', "profile 'quick'"),
        ("profiles.toml", '"train.lr_schedule" = "cosine"', '"train.lr_schedul" = "cosine"', "unknown key 'train.lr_schedul'"),
        ("profiles.toml", 'extends = "quick"', 'extends = "quik"', "profiles.toml: profile 'medium': extends: unknown profile 'quik'"),
        ("profiles.toml", 'reduced = true\n# Chosen from', 'reduced = true\nextends = "medium"\n# Chosen from',
         "profiles.toml: profile 'medium': extends: quick -> medium -> quick is a cycle"),
    ],
)
def test_bad_registry_files_name_file_cell_and_key(reg_dir, file, old, new, expected):
    _edit(reg_dir / file, old, new)
    with pytest.raises(ConfigError) as err:
        load_registry(reg_dir)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message.strip() or "TOML" in message


def test_out_of_range_override_is_refused(reg_dir):
    _edit(reg_dir / "table3.toml", 'name = "Base"', 'name = "Base"\noverrides = { "eval.theta" = 1.5 }')
    reg = load_registry(reg_dir)  # the type is right; the range is checked when the config resolves
    with pytest.raises(ConfigError, match=r"eval.theta = 1.5: must be in \[0, 1\]"):
        _plan(reg, ["table3"])


def test_unknown_table_and_profile_are_one_line_errors():
    reg = load_registry()
    with pytest.raises(ConfigError, match="unknown table 'table9'"):
        reg.table("table9")
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        reg.profile("fast")


def test_a_profile_that_extends_another_changes_only_what_it_names():
    reg = load_registry()
    quick, medium = reg.profile("quick"), reg.profile("medium")
    assert medium.synth == quick.synth and medium.reduced and medium.description != quick.description
    assert medium.overrides == {**quick.overrides, "train.epochs": 12, "eval.audit_epochs": True,
                                "eval.resize_grid": [96, 128]}


def test_extended_variant_and_role_overrides_merge_key_by_key(reg_dir):
    with (reg_dir / "profiles.toml").open("a") as fh:
        fh.write('\n[quick.variant.reference]\n"train.halve_every" = 3\n'
                 '[quick.variant.reference.role.cls_teacher]\n"train.halve_every" = 2\n'
                 '[medium.variant.reference.role.loc_teacher]\n"train.halve_every" = 5\n')
    reg = load_registry(reg_dir)

    def halve_every(profile, role):
        return resolve_config(reg, scope=Scope(), profile=profile, variant="reference", role=role,
                              context_pool=True, seed=0, num_classes=10).train.halve_every

    assert [halve_every("medium", r) for r in ("student", "cls_teacher", "loc_teacher")] == [3, 2, 5]
    assert [halve_every("quick", r) for r in ("student", "cls_teacher", "loc_teacher")] == [3, 2, 3]  # nothing leaks back


def test_metric_version_is_always_identity_and_old_configs_read_as_version_1():
    from kdcicam.core.config import METRIC_VERSION, RunConfig, metric_version_of, to_dict
    from kdcicam.core.identity import identity_dict

    # in the hashed dict at its default too: every run id differs from those of version-1 runs
    assert identity_dict(RunConfig())["eval"]["metric_version"] == METRIC_VERSION == 2
    stored_before = to_dict(RunConfig())
    stored_before["eval"].pop("metric_version")  # a resolved config written before the key existed
    assert metric_version_of(to_dict(RunConfig())) == 2 and metric_version_of(stored_before) == 1
    assert metric_version_of({"eval": {"theta": 0.2}}) == 2  # a partial config: the current version
    assert "box_rule" not in identity_dict(RunConfig())["eval"]  # identity only when set


def test_runs_of_another_metric_version_form_their_own_scope():
    from kdcicam.analysis.results import ScopeKey

    new, old = ScopeKey("synthetic", "vgg16", "quick", "reference"), ScopeKey("synthetic", "vgg16", "quick",
                                                                              "reference", metric_version=1)
    assert new != old and "metric version 1" in old.title and "metric version" not in new.title
    assert old.slug.endswith("metrics-v1") and new.sort_key() != old.sort_key()


def test_the_gallery_is_data_of_a_table(reg_dir):
    assert load_registry().tables["table3"].gallery == ("base", "conpool", "conpool+kd")
    assert all(not t.gallery for k, t in load_registry().tables.items() if k != "table3")
    _edit(reg_dir / "table3.toml", 'gallery = ["base", "conpool",', 'gallery = ["base", "conpol",')
    with pytest.raises(ConfigError, match=r"table3.toml: gallery: no cell 'conpol'"):
        load_registry(reg_dir)
